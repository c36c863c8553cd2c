//! The keysets of an unsealed vault, and what is derived from them alone:
//! where a value's forward entry may be, whether a stored entry is bound to
//! its key, and the associated data that binds a reverse row to its place.
//! Shared by tokenize and detokenize, the rotation job and `verify`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::crypto::{Kek, KeyPurpose, Keyset};
use crate::error::Error;
use crate::store::RotationStore;
use crate::store::schema::{ForwardKey, KeysetRow, KeysetState};

/// The keysets of an unsealed vault. Replaced whole (never edited in place)
/// when a rotation starts or ends, on the writer thread, between commits.
pub(crate) struct Keyring {
    pub(crate) active: Arc<Keyset>,
    pub(crate) by_version: HashMap<u32, Arc<Keyset>>,
    /// The versions other than the active one, newest first: during a
    /// rotation a mapping may still sit under one of them.
    older: Vec<Arc<Keyset>>,
}

impl Keyring {
    pub(crate) fn new(active: Arc<Keyset>, by_version: HashMap<u32, Arc<Keyset>>) -> Self {
        let mut older: Vec<Arc<Keyset>> = by_version
            .values()
            .filter(|k| k.version() != active.version())
            .cloned()
            .collect();
        older.sort_by_key(|k| std::cmp::Reverse(k.version()));
        Self {
            active,
            by_version,
            older,
        }
    }

    /// Whether the active keyset is the only one: no rotation runs, and a
    /// value stored has its forward entry under the active keyset's key.
    pub(crate) fn single(&self) -> bool {
        self.older.is_empty()
    }

    /// Where a value's forward entry may be: under the active keyset, or
    /// while a rotation runs under an older one.
    pub(crate) fn lookup(&self, namespace_id: u32, canonical: &str) -> Lookup {
        let key = |keyset: &Keyset| {
            let index = keyset.prf().blind_index(namespace_id, canonical.as_bytes());
            ForwardKey::new(namespace_id, keyset.version(), &index)
        };
        Lookup {
            active: key(&self.active),
            older: self.older.iter().map(|k| key(k)).collect(),
        }
    }

    /// The token of a stored forward entry whose binding verifies under the
    /// PRF key of the entry's version; `None` for a rewritten, moved or
    /// unbound entry, or one under a version this ring does not hold.
    pub(crate) fn open_forward<'a>(&self, key: &ForwardKey, stored: &'a [u8]) -> Option<&'a str> {
        let keyset = self.by_version.get(&key.version())?;
        std::str::from_utf8(key.open(keyset.prf(), stored)?).ok()
    }
}

/// The keyring shared by request tasks and writer jobs.
pub(crate) type SharedKeyring = Arc<RwLock<Arc<Keyring>>>;

/// The forward keys a deterministic value may be stored under, active first.
#[derive(Clone)]
pub(crate) struct Lookup {
    pub(crate) active: ForwardKey,
    older: Vec<ForwardKey>,
}

impl Lookup {
    /// Every key, active first.
    pub(crate) fn all(&self) -> impl Iterator<Item = &ForwardKey> {
        std::iter::once(&self.active).chain(&self.older)
    }
}

/// The associated data of a reverse row: namespace, token and key version,
/// so that a ciphertext moved to another row fails to open.
pub(crate) struct ReverseAd {
    namespace: [u8; 4],
    token: Vec<u8>,
    version: [u8; 4],
}

impl ReverseAd {
    pub(crate) fn each(&self) -> [&[u8]; 3] {
        [&self.namespace, &self.token, &self.version]
    }
}

pub(crate) fn reverse_ad(namespace_id: u32, token: &str, version: u32) -> ReverseAd {
    ReverseAd {
        namespace: namespace_id.to_be_bytes(),
        token: token.as_bytes().to_vec(),
        version: version.to_be_bytes(),
    }
}

/// Every keyset that is not destroyed, unwrapped under `kek`, with its row.
pub(crate) async fn live_keysets(
    store: &dyn RotationStore,
    kek: &Kek,
) -> Result<Vec<(u32, KeysetRow, Keyset)>, Error> {
    let mut live = Vec::new();
    for (version, row) in store.keyset_rows().await? {
        if let KeysetState::Destroyed { .. } = row.state {
            continue;
        }
        let keyset = Keyset::unwrap(kek, version, KeyPurpose::Data, &row.wrapped)
            .map_err(|_| Error::KeyIntegrity)?;
        live.push((version, row, keyset));
    }
    Ok(live)
}

pub(crate) async fn load_keyring(store: &dyn RotationStore, kek: &Kek) -> Result<Keyring, Error> {
    let active = store.active_keyset().await?;
    let by_version: HashMap<u32, Arc<Keyset>> = live_keysets(store, kek)
        .await?
        .into_iter()
        .map(|(version, _, keyset)| (version, Arc::new(keyset)))
        .collect();
    let active = by_version
        .get(&active)
        .cloned()
        .ok_or(Error::Corrupt("the active keyset is missing"))?;
    Ok(Keyring::new(active, by_version))
}
