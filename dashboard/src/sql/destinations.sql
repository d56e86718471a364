-- name: destinations
-- Each destination's devices and volunteers.
-- columns: destination text, devices int, volunteers int
SELECT destination, count(DISTINCT device_pseudonym) AS devices, count(DISTINCT agent_id) AS volunteers
FROM ${dest_flows}
GROUP BY destination
HAVING count(DISTINCT device_pseudonym) >= ${min_devices} AND count(DISTINCT agent_id) >= ${min_volunteers}
