-- name: dest_flows
-- A fragment, not a query: flows with a destination name, and the
-- registrable domain it belongs to. Other files use it as ${dest_flows}.
(SELECT vendor, model, os_version, device_pseudonym, agent_id, boot_pseudonym, domain,
        coalesce(registrable_domain(domain), domain) AS destination, seconds_since_boot, window_start,
        bytes_out, bytes_in
 FROM flows
 WHERE domain IS NOT NULL AND domain <> '')
