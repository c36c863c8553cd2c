//! Files the client writes that may hold PHI: bulk outputs (revealed values,
//! or tokens beside the rest of a patient's record), failed-cell reports,
//! audit exports.
//!
//! Every one is created by [`create_private`]: readable by its owner only,
//! never over an existing file and never through a symbolic link. A bulk
//! output written under a temporary name gets its final one from
//! [`publish`], which does not replace an existing file either.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Creates `path` for writing with mode 0600 (on Unix), failing if anything
/// exists at `path` — a file, a directory, a symbolic link (dangling or
/// not). The error names the path.
pub fn create_private(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    // `create_new` is open(2) with O_CREAT | O_EXCL, which POSIX makes fail
    // with EEXIST when the last component names anything, "regardless of
    // the contents of the symbolic link" if it is one. So nobody can plant
    // a link at the output's name and have revealed values written where it
    // points (into a shared or world-readable place, or over another file),
    // and O_NOFOLLOW would add nothing (nor the `libc` crate, for its
    // constant). Links among the parent directories are still followed:
    // those are part of the path the caller chose.
    options.write(true).create_new(true);
    // The mode is set by open(2) itself, so there is no moment at which the
    // file exists with the umask's usual 0644 and someone else could open
    // it (as there would be with a chmod after creating it). The umask can
    // only remove bits, so whatever it is the file is never wider than 0600.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => already_exists(path),
        kind => io::Error::new(kind, format!("cannot create {}: {e}", path.display())),
    })
}

/// Fails, with the same error as [`create_private`], if anything exists at
/// `path` (a symbolic link counts, even a dangling one). For a check before
/// a long run whose output is created only at its end; [`publish`] checks
/// again, atomically.
pub fn ensure_absent(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Err(already_exists(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot check {}: {e}", path.display()),
        )),
    }
}

/// Gives the finished file `partial` its final name `path`, unless
/// something exists at `path` by then: that is never replaced, and
/// `partial` is left where it is.
///
/// rename(2) would silently replace whatever is at `path`; link(2) fails
/// with EEXIST instead, atomically, so a file (or a symbolic link) that
/// appeared there during the run is never clobbered. A file system without
/// hard links (FAT, some network shares) gets a check followed by a rename,
/// which leaves a window between the two.
pub fn publish(partial: &Path, path: &Path) -> io::Result<()> {
    match std::fs::hard_link(partial, path) {
        Ok(()) => std::fs::remove_file(partial).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{} is complete, but {} could not be removed: {e}",
                    path.display(),
                    partial.display()
                ),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(already_exists(path)),
        Err(_) => {
            ensure_absent(path)?;
            std::fs::rename(partial, path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot rename {} to {}: {e}",
                        partial.display(),
                        path.display()
                    ),
                )
            })
        }
    }
}

/// The one message for an output that is already there.
fn already_exists(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "{} already exists; outputs are never overwritten (nor written through a symbolic link): remove it or choose another name",
            path.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A scratch directory, removed when dropped (the crate has no
    /// `tempfile` dev-dependency).
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "phivault-client-output-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir(&dir).expect("create the scratch directory");
            Self(dir)
        }

        fn path(&self, name: &str) -> PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::symlink_metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o7777
    }

    fn is_exists_error(error: &io::Error, path: &Path) -> bool {
        let message = error.to_string();
        error.kind() == io::ErrorKind::AlreadyExists
            && message.contains(&path.display().to_string())
            && message.contains("already exists")
    }

    #[test]
    fn creates_a_writable_file() {
        use std::io::Write;
        let scratch = Scratch::new();
        let path = scratch.path("out.csv");
        let mut file = create_private(&path).expect("create");
        file.write_all(b"id,ssn\n").expect("write");
        drop(file);
        assert_eq!(std::fs::read(&path).expect("read"), b"id,ssn\n");
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }

    /// Set in the child that `owner_only_under_a_permissive_umask` starts.
    #[cfg(unix)]
    const UMASK_CHILD: &str = "PHIVAULT_TEST_UMASK_000_CHILD";

    #[cfg(unix)]
    #[test]
    fn owner_only_under_a_permissive_umask() {
        if std::env::var_os(UMASK_CHILD).is_some() {
            let scratch = Scratch::new();
            // The control: under this umask a plain `File::create` gives
            // 0666, readable and writable by everyone.
            let control = scratch.path("control");
            std::fs::File::create(&control).expect("create control");
            assert_eq!(mode(&control), 0o666, "the umask is not 000");
            let path = scratch.path("revealed.csv");
            create_private(&path).expect("create");
            assert_eq!(mode(&path), 0o600);
            return;
        }
        // The umask belongs to the whole process and std has no call to set
        // it (libc's is unsafe, and forbidden here): run this very test
        // again in a child that `sh` starts under `umask 000`.
        let name = "output::tests::owner_only_under_a_permissive_umask";
        let output = std::process::Command::new("sh")
            .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().expect("the test binary"))
            .args(["--exact", name, "--test-threads=1", "--nocapture"])
            .env(UMASK_CHILD, "1")
            .output()
            .expect("run sh");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // A filter that matched nothing would pass too.
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    #[test]
    fn an_existing_file_is_refused_and_left_alone() {
        let scratch = Scratch::new();
        let path = scratch.path("out.csv");
        std::fs::write(&path, "an earlier run's output").expect("write");
        let error = create_private(&path).expect_err("the file exists");
        assert!(is_exists_error(&error, &path), "{error}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "an earlier run's output"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_is_refused_and_its_target_untouched() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let scratch = Scratch::new();
        let target = scratch.path("elsewhere.txt");
        std::fs::write(&target, "someone else's file").expect("write");
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let link = scratch.path("out.csv");
        symlink(&target, &link).expect("symlink");
        let error = create_private(&link).expect_err("a link");
        assert!(is_exists_error(&error, &link), "{error}");
        assert_eq!(
            std::fs::read_to_string(&target).expect("read"),
            "someone else's file"
        );
        assert_eq!(mode(&target), 0o644);

        // A dangling link: following it would create the file it names.
        let nowhere = scratch.path("not-yet");
        let dangling = scratch.path("dangling.csv");
        symlink(&nowhere, &dangling).expect("symlink");
        let error = create_private(&dangling).expect_err("a dangling link");
        assert!(is_exists_error(&error, &dangling), "{error}");
        assert!(std::fs::symlink_metadata(&nowhere).is_err());
    }

    #[test]
    fn other_failures_name_the_path() {
        let scratch = Scratch::new();
        let path = scratch.path("no-such-dir").join("out.csv");
        let error = create_private(&path).expect_err("no parent");
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn ensure_absent_sees_files_and_links() {
        let scratch = Scratch::new();
        let path = scratch.path("out.csv");
        ensure_absent(&path).expect("nothing there");
        std::fs::write(&path, "x").expect("write");
        let error = ensure_absent(&path).expect_err("a file");
        assert!(is_exists_error(&error, &path), "{error}");
        #[cfg(unix)]
        {
            let dangling = scratch.path("dangling.csv");
            std::os::unix::fs::symlink(scratch.path("not-yet"), &dangling).expect("symlink");
            let error = ensure_absent(&dangling).expect_err("a dangling link");
            assert!(is_exists_error(&error, &dangling), "{error}");
        }
    }

    #[test]
    fn publish_moves_the_partial_into_place() {
        let scratch = Scratch::new();
        let (partial, path) = (scratch.path("out.csv.partial"), scratch.path("out.csv"));
        drop(create_private(&partial).expect("create"));
        std::fs::write(&partial, "complete").expect("write");
        publish(&partial, &path).expect("publish");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "complete");
        assert!(std::fs::symlink_metadata(&partial).is_err(), "partial left");
        #[cfg(unix)]
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn publish_never_replaces_an_existing_file() {
        let scratch = Scratch::new();
        let (partial, path) = (scratch.path("out.csv.partial"), scratch.path("out.csv"));
        std::fs::write(&partial, "new").expect("write");
        std::fs::write(&path, "appeared during the run").expect("write");
        let error = publish(&partial, &path).expect_err("exists");
        assert!(is_exists_error(&error, &path), "{error}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "appeared during the run"
        );
        assert_eq!(
            std::fs::read_to_string(&partial).expect("read"),
            "new",
            "the finished output is kept"
        );
    }

    #[cfg(unix)]
    #[test]
    fn publish_never_replaces_a_symbolic_link() {
        let scratch = Scratch::new();
        let (partial, path) = (scratch.path("out.csv.partial"), scratch.path("out.csv"));
        let target = scratch.path("elsewhere.txt");
        std::fs::write(&partial, "revealed").expect("write");
        std::fs::write(&target, "someone else's file").expect("write");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let error = publish(&partial, &path).expect_err("a link");
        assert!(is_exists_error(&error, &path), "{error}");
        assert_eq!(
            std::fs::read_to_string(&target).expect("read"),
            "someone else's file"
        );
        assert!(
            std::fs::symlink_metadata(&path)
                .expect("link")
                .file_type()
                .is_symlink()
        );
    }
}
