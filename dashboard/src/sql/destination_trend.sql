-- name: destination_trend
-- Devices that contacted each destination, per day.
-- columns: destination text, day int, devices int, volunteers int
SELECT destination, date_trunc('day', window_start) AS day,
       count(DISTINCT device_pseudonym) AS devices, count(DISTINCT agent_id) AS volunteers
FROM ${dest_flows}
GROUP BY destination, date_trunc('day', window_start)
HAVING count(DISTINCT device_pseudonym) >= ${min_devices} AND count(DISTINCT agent_id) >= ${min_volunteers}
