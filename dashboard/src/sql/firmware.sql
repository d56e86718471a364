-- name: firmware
-- Each model's firmware versions, with when each was first seen.
-- columns: vendor text, model text, os_version text, devices int, first_seen int
SELECT vendor, model, os_version, count(DISTINCT device_pseudonym) AS devices, min(window_start) AS first_seen
FROM flows
GROUP BY vendor, model, os_version
HAVING count(DISTINCT device_pseudonym) >= ${min_devices} AND count(DISTINCT agent_id) >= ${min_volunteers}
