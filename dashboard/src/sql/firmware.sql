-- name: firmware
-- Each model's firmware versions, with when each was first seen.
-- Distinct devices and volunteers are counted by grouping sets (see queries.rs).
-- columns: vendor text, model text, os_version text, devices int, first_seen int
SELECT vendor, model, os_version, count(device_pseudonym) AS devices, min(first_seen) AS first_seen
FROM (SELECT vendor, model, os_version, device_pseudonym, agent_id, min(window_start) AS first_seen
      FROM flows
      GROUP BY GROUPING SETS ((vendor, model, os_version, device_pseudonym), (vendor, model, os_version, agent_id)))
GROUP BY vendor, model, os_version
HAVING count(device_pseudonym) >= ${min_devices} AND count(agent_id) >= ${min_volunteers}
