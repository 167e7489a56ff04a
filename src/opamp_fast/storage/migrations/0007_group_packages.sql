-- Packages a group offers its members (docs/api.md "Packages"): one version per
-- package name. An agent's own offer (package_offers) wins over its group's.
--
-- No foreign key to packages: on a new database this file runs before 0008 creates that table.
-- The API keeps the reference instead: assigning a version takes FOR KEY SHARE on its packages
-- row, and deleting a version takes FOR UPDATE on it before it looks for groups offering it.
CREATE TABLE group_packages (
    group_name text NOT NULL REFERENCES agent_groups (name) ON DELETE CASCADE,
    name text NOT NULL,
    version text NOT NULL,
    PRIMARY KEY (group_name, name)
);
CREATE INDEX group_packages_package_idx ON group_packages (name, version);
