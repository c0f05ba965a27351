//! The workload's schema, and the triggers each invalidator design needs.

/// Tables: items (one row per key), the version log written in the same transaction,
/// the outbox and the relay's durable cursor; and the trigger functions.
pub const SCHEMA: &str = r#"
CREATE TABLE items (
    key text PRIMARY KEY,
    version bigint NOT NULL,
    write_id text NOT NULL,
    payload text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE item_versions (
    key text NOT NULL,
    version bigint NOT NULL,
    write_id text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key, version)
);
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    key text NOT NULL,
    version bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE outbox_cursor (
    relay text PRIMARY KEY,
    position bigint NOT NULL
);
CREATE FUNCTION coherence_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('coherence_invalidate', json_build_object('key', NEW.key, 'version', NEW.version)::text);
    RETURN NEW;
END $$;
CREATE FUNCTION coherence_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox (key, version) VALUES (NEW.key, NEW.version);
    RETURN NEW;
END $$;
"#;

/// The notification channel of the `notify` design.
pub const CHANNEL: &str = "coherence_invalidate";

/// SQL that installs the trigger of `design` (and removes the other's).
pub fn triggers(design: crate::Design) -> String {
    let mut sql = String::from(
        "DROP TRIGGER IF EXISTS items_notify ON items;\nDROP TRIGGER IF EXISTS items_outbox ON items;\n",
    );
    match design {
        crate::Design::Notify => sql.push_str(
            "CREATE TRIGGER items_notify AFTER INSERT OR UPDATE ON items \
             FOR EACH ROW EXECUTE FUNCTION coherence_notify();\n",
        ),
        crate::Design::Outbox => sql.push_str(
            "CREATE TRIGGER items_outbox AFTER INSERT OR UPDATE ON items \
             FOR EACH ROW EXECUTE FUNCTION coherence_outbox();\n",
        ),
        crate::Design::None => {}
    }
    sql
}
