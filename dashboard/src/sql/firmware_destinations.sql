-- name: firmware_destinations
-- What each firmware version of a model contacts.
-- columns: vendor text, model text, os_version text, destination text
SELECT vendor, model, os_version, destination
FROM ${dest_flows}
GROUP BY vendor, model, os_version, destination
HAVING count(DISTINCT device_pseudonym) >= ${min_devices} AND count(DISTINCT agent_id) >= ${min_volunteers}
