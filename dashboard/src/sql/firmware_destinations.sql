-- name: firmware_destinations
-- What each firmware version of a model contacts.
-- Distinct devices and volunteers are counted by grouping sets (see queries.rs).
-- columns: vendor text, model text, os_version text, destination text
SELECT vendor, model, os_version, destination
FROM (SELECT vendor, model, os_version, destination, device_pseudonym, agent_id
      FROM ${dest_flows}
      GROUP BY GROUPING SETS ((vendor, model, os_version, destination, device_pseudonym),
                              (vendor, model, os_version, destination, agent_id)))
GROUP BY vendor, model, os_version, destination
HAVING count(device_pseudonym) >= ${min_devices} AND count(agent_id) >= ${min_volunteers}
