//! The PostgreSQL schema, as versioned migrations the vault applies itself.
//!
//! Everything lives in the `phivault` schema of the database the
//! connection string names. A node applies the migrations its binary knows
//! and the database lacks, one transaction each, under an advisory
//! transaction lock so that nodes starting together apply each once; it
//! refuses a database whose schema is newer than it knows, so that an old
//! binary left behind in a rolling upgrade stops rather than writes rows it
//! does not understand.
//!
//! What a database administrator sees is what RocksDB stores: ciphertext,
//! keyed hashes, and rows that shape access carrying MACs under a key derived
//! from the KEK (DESIGN.md §10).

/// The migrations, in order: version `i + 1` is `MIGRATIONS[i]`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the vault.
    r"
    -- The records about the vault itself: format version, KDF record, KEK
    -- check, audit key (not tagged: each is checked by what it unlocks), and
    -- the active keyset, next namespace id and rotation records (tagged).
    CREATE TABLE phivault.meta (
        name  text  PRIMARY KEY,
        value bytea NOT NULL
    );
    -- Keysets by version, wrapped under the KEK, tagged.
    CREATE TABLE phivault.keysets (
        version integer PRIMARY KEY,
        stored  bytea   NOT NULL
    );
    CREATE TABLE phivault.namespaces (
        name   text  PRIMARY KEY,
        stored bytea NOT NULL
    );
    CREATE TABLE phivault.clients (
        id     text  PRIMARY KEY,
        stored bytea NOT NULL
    );
    -- Both directions of a mapping in one row (DESIGN.md §9): the primary
    -- key is the reverse row and catches token collisions; the unique key is
    -- the forward index (a keyed blind index under a keyset version). An
    -- insert with ON CONFLICT DO NOTHING and no conflict target arbitrates
    -- on both at once, so concurrent nodes bringing one new value end with
    -- one row. A namespace without determinism leaves the forward columns
    -- null (nulls never conflict).
    CREATE TABLE phivault.mappings (
        namespace integer NOT NULL,
        token     bytea   NOT NULL,
        reverse   bytea   NOT NULL,
        keyset    integer,
        blind     bytea,
        forward   bytea,
        PRIMARY KEY (namespace, token),
        UNIQUE (namespace, keyset, blind)
    );
    -- Heads of the audit chains, tagged.
    CREATE TABLE phivault.audit_lanes (
        lane integer PRIMARY KEY,
        head bytea   NOT NULL
    );
    CREATE TABLE phivault.audit (
        lane   integer NOT NULL,
        seq    bigint  NOT NULL,
        record bytea   NOT NULL,
        PRIMARY KEY (lane, seq)
    );
    -- The disclosure index: which records revealed the token of a mark.
    CREATE TABLE phivault.disclosures (
        mark bytea   NOT NULL,
        lane integer NOT NULL,
        seq  bigint  NOT NULL,
        PRIMARY KEY (mark, lane, seq)
    );
    -- Leases on background jobs, on the database's clock, with fencing.
    CREATE TABLE phivault.leases (
        job     text        PRIMARY KEY,
        holder  text        NOT NULL,
        fence   bigint      NOT NULL,
        expires timestamptz NOT NULL
    );
    ",
    // 2: the registry's epoch, raised in the commit of every change to
    // clients, namespaces or keysets, so that other nodes reload them.
    r"
    CREATE TABLE phivault.registry_epoch (
        one   boolean PRIMARY KEY DEFAULT true CHECK (one),
        epoch bigint  NOT NULL
    );
    INSERT INTO phivault.registry_epoch (epoch) VALUES (1);
    ",
    // 3: disclosures list oldest first across lanes: each entry takes a
    // number from one sequence as it is written, in the order appends reach
    // the database.
    r"
    ALTER TABLE phivault.disclosures ADD COLUMN ord bigint GENERATED ALWAYS AS IDENTITY;
    CREATE INDEX disclosures_in_order ON phivault.disclosures (mark, ord);
    ",
    // 4: the disclosure index moves into the audit rows: each record keeps
    // the marks of the tokens it revealed as an array under a GIN index,
    // whose pending list takes a record's marks in one sequential write,
    // where the disclosures table took two random B-tree insertions per
    // token (a reveal of 1,000 tokens spent two thirds of its time there,
    // BENCHMARKS.md). `ord` numbers records in the order appends reach the
    // database, for listing disclosures oldest first across lanes; records
    // already there keep their disclosures' order.
    r"
    ALTER TABLE phivault.audit ADD COLUMN marks bytea[], ADD COLUMN ord bigint;
    UPDATE phivault.audit a SET marks = n.marks, ord = n.ord FROM (
        SELECT a.lane, a.seq, d.marks,
               row_number() OVER (ORDER BY d.first NULLS LAST, a.lane, a.seq) AS ord
        FROM phivault.audit a LEFT JOIN (
            SELECT lane, seq, array_agg(mark) AS marks, min(ord) AS first
            FROM phivault.disclosures GROUP BY lane, seq
        ) d ON d.lane = a.lane AND d.seq = a.seq
    ) n WHERE a.lane = n.lane AND a.seq = n.seq;
    CREATE SEQUENCE phivault.audit_ord OWNED BY phivault.audit.ord;
    SELECT setval('phivault.audit_ord', coalesce((SELECT max(ord) FROM phivault.audit), 0) + 1, false);
    ALTER TABLE phivault.audit
        ALTER COLUMN ord SET DEFAULT nextval('phivault.audit_ord'),
        ALTER COLUMN ord SET NOT NULL;
    CREATE INDEX audit_marks ON phivault.audit USING gin (marks);
    CREATE UNIQUE INDEX audit_in_order ON phivault.audit (ord);
    DROP TABLE phivault.disclosures;
    ",
    // 5: what each node admitted under its clients' rate limits and quotas,
    // shared once a second so that every node charges the others' share.
    // Unlogged: soft state, rebuilt within a second by the nodes' running
    // totals, so it costs no WAL and no wait for the synchronous standby
    // (and is empty after a failover until the nodes publish again).
    r"
    CREATE UNLOGGED TABLE phivault.limit_usage (
        node    text        NOT NULL,
        key     text        NOT NULL,
        total   bigint      NOT NULL,
        expires timestamptz NOT NULL,
        PRIMARY KEY (node, key)
    );
    ",
];

/// Raises the registry's epoch, in the transaction of the change.
pub(super) const RAISE_EPOCH: &str = "UPDATE phivault.registry_epoch SET epoch = epoch + 1";

/// Creates the schema and its version table when missing, and serialises
/// migrating nodes. The lock key is an arbitrary constant of this project.
pub(super) const PREPARE: &str = r"
    SELECT pg_advisory_xact_lock(7306920417331934327);
    CREATE SCHEMA IF NOT EXISTS phivault;
    CREATE TABLE IF NOT EXISTS phivault.schema_version (
        one     boolean PRIMARY KEY DEFAULT true CHECK (one),
        version integer NOT NULL
    );
";

/// The schema version the database is at (none: 0).
pub(super) const READ_VERSION: &str = "SELECT version FROM phivault.schema_version";

/// Records the version reached.
pub(super) const WRITE_VERSION: &str = "INSERT INTO phivault.schema_version (version) VALUES ($1) \
     ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version";
