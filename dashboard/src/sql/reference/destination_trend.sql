-- name: destination_trend
-- The plain form of the query of the same name, which a test checks it
-- against (see queries.rs): what it must answer.
-- Devices that contacted each destination, per day.
-- columns: destination text, day int, devices int, volunteers int
SELECT destination, date_trunc('day', window_start) AS day,
       count(DISTINCT device_pseudonym) AS devices, count(DISTINCT agent_id) AS volunteers
FROM ${dest_flows}
GROUP BY destination, date_trunc('day', window_start)
HAVING count(DISTINCT device_pseudonym) >= ${min_devices} AND count(DISTINCT agent_id) >= ${min_volunteers}
