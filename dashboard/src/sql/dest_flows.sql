-- name: dest_flows
-- A fragment, not a query: flows with their destination's name and the
-- registrable domain it belongs to; a destination no name was seen for is
-- both its key (`tcp/8886 (unnamed)`, `203.0.113.0/24 (unnamed)`, see
-- unnamed_destination). Other files use it as ${dest_flows}.
(SELECT vendor, model, os_version, device_pseudonym, agent_id, boot_pseudonym,
        CASE WHEN domain IS NULL OR domain = '' THEN unnamed_destination(transport, dst_ip, CAST(dst_port AS VARCHAR))
             ELSE domain END AS domain,
        CASE WHEN domain IS NULL OR domain = '' THEN unnamed_destination(transport, dst_ip, CAST(dst_port AS VARCHAR))
             ELSE coalesce(registrable_domain(domain), domain) END AS destination,
        seconds_since_boot, window_start, bytes_out, bytes_in, transport, dst_port
 FROM flows
 WHERE (domain IS NOT NULL AND domain <> '') OR dst_ip <> '')
