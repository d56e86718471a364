-- name: model_destinations
-- What each model contacts, and when after boot: quartiles over boots of
-- the seconds to the first contact, and the bytes. The per-boot sums are
-- decimals (no number of records wraps them); their totals are integers
-- saturating at the largest one, and NULL when no record held bytes (as
-- from a DNS log).
-- columns: vendor text, model text, destination text, devices int, volunteers int, p25_s float, median_s float, p75_s float, bytes_out int, bytes_in int
SELECT vendor, model, destination,
       count(DISTINCT device) AS devices, count(DISTINCT agent) AS volunteers,
       percentile_cont(0.25) WITHIN GROUP (ORDER BY first_s) AS p25_s,
       median(first_s) AS median_s,
       percentile_cont(0.75) WITHIN GROUP (ORDER BY first_s) AS p75_s,
       CAST(CASE WHEN sum(bytes_out) > 9223372036854775807 THEN 9223372036854775807 ELSE sum(bytes_out) END AS BIGINT) AS bytes_out,
       CAST(CASE WHEN sum(bytes_in) > 9223372036854775807 THEN 9223372036854775807 ELSE sum(bytes_in) END AS BIGINT) AS bytes_in
FROM (SELECT vendor, model, destination, boot_pseudonym,
             min(device_pseudonym) AS device, min(agent_id) AS agent,
             min(seconds_since_boot) AS first_s,
             sum(CAST(bytes_out AS DECIMAL(38, 0))) AS bytes_out,
             sum(CAST(bytes_in AS DECIMAL(38, 0))) AS bytes_in
      FROM ${dest_flows}
      GROUP BY vendor, model, destination, boot_pseudonym)
GROUP BY vendor, model, destination
HAVING count(DISTINCT device) >= ${min_devices} AND count(DISTINCT agent) >= ${min_volunteers}
