-- name: destinations
-- Each destination's devices and volunteers.
-- Distinct devices and volunteers are counted by grouping sets (see queries.rs).
-- columns: destination text, devices int, volunteers int
SELECT destination, count(device_pseudonym) AS devices, count(agent_id) AS volunteers
FROM (SELECT destination, device_pseudonym, agent_id
      FROM ${dest_flows}
      GROUP BY GROUPING SETS ((destination, device_pseudonym), (destination, agent_id)))
GROUP BY destination
HAVING count(device_pseudonym) >= ${min_devices} AND count(agent_id) >= ${min_volunteers}
