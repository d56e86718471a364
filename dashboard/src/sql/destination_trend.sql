-- name: destination_trend
-- Devices that contacted each destination, per day.
-- Distinct devices and volunteers are counted by grouping sets (see queries.rs).
-- columns: destination text, day int, devices int, volunteers int
SELECT destination, day, count(device_pseudonym) AS devices, count(agent_id) AS volunteers
FROM (SELECT destination, day, device_pseudonym, agent_id
      FROM (SELECT destination, date_trunc('day', window_start) AS day, device_pseudonym, agent_id FROM ${dest_flows})
      GROUP BY GROUPING SETS ((destination, day, device_pseudonym), (destination, day, agent_id)))
GROUP BY destination, day
HAVING count(device_pseudonym) >= ${min_devices} AND count(agent_id) >= ${min_volunteers}
