//! The command lines pinned by golden files: `--help`, refusals of bad
//! arguments and their exit codes, for both binaries (`tests/cmd/*.trycmd`).
//! After a deliberate change of a command's text, `TRYCMD=overwrite cargo
//! test -p phivault-tests --test cli` rewrites the files; review the diff.

#[test]
fn command_lines() {
    trycmd::TestCases::new()
        .register_bin("phivault", phivault_tests::binary("phivault"))
        .register_bin("phivault-client", phivault_tests::binary("phivault-client"))
        .env("PHIVAULT_LOG", "off")
        .case("tests/cmd/*.trycmd")
        // Cases whose outcome a caller's PHIVAULT_* variables would change
        // remove them (a `.toml` case can).
        .case("tests/cmd/*.toml");
}
