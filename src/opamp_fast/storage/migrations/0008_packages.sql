-- Agent packages (see docs/api.md "Packages" and packages/registry.py).

-- One row per uploaded package version. The file itself is in the package store (a directory
-- or an S3 bucket) under storage_key; sha256 is computed by the server while the upload streams.
CREATE TABLE packages (
    name text NOT NULL,
    version text NOT NULL,
    type text NOT NULL CHECK (type IN ('top_level', 'addon')),
    size_bytes bigint NOT NULL CHECK (size_bytes >= 0),
    sha256 bytea NOT NULL CHECK (octet_length(sha256) = 32),
    signature bytea,
    storage_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- What each agent should have: one version per package name. A package version that is
-- offered cannot be deleted (the foreign key refuses it; the API answers 409 first).
CREATE TABLE package_offers (
    instance_uid bytea NOT NULL CHECK (octet_length(instance_uid) = 16),
    name text NOT NULL,
    version text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_uid, name),
    FOREIGN KEY (name, version) REFERENCES packages (name, version)
);
CREATE INDEX package_offers_package_idx ON package_offers (name, version);

-- The agents' own reports (PackageStatuses), one row per agent and package, written in batches
-- off the OpAMP path (packages/registry.py StatusWriter), last report wins.
CREATE TABLE agent_package_statuses (
    instance_uid bytea NOT NULL CHECK (octet_length(instance_uid) = 16),
    name text NOT NULL,
    agent_has_version text NOT NULL DEFAULT '',
    agent_has_hash bytea NOT NULL DEFAULT '',
    server_offered_version text NOT NULL DEFAULT '',
    server_offered_hash bytea NOT NULL DEFAULT '',
    status text NOT NULL,
    error_message text NOT NULL DEFAULT '',
    download_percent double precision,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_uid, name)
);
CREATE INDEX agent_package_statuses_name_idx ON agent_package_statuses (name);

-- The PackageStatuses envelope of each agent: the all_packages_hash it last received from us
-- and its overall error.
CREATE TABLE agent_package_reports (
    instance_uid bytea PRIMARY KEY CHECK (octet_length(instance_uid) = 16),
    server_provided_all_packages_hash bytea NOT NULL DEFAULT '',
    error_message text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);
