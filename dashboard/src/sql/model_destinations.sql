-- name: model_destinations
-- What each model contacts, and when after boot: quartiles over boots of
-- the seconds to the first contact, and the bytes. The per-boot sums are
-- decimals (no number of records wraps them); their totals are integers
-- saturating at the largest one.
-- Written so that its memory stays bounded however many boots there are:
-- every step is a grouping, a join with the few published groups or a
-- sort, which spill to disk. (count(DISTINCT ...), percentile_cont and
-- median hold every value of a group in memory: a few hundred groups of
-- millions of boots did not fit the query memory at 30 M records.) The
-- quartiles are percentile_cont's: the values at ranks p * (n - 1) of the
-- n boots, interpolated linearly between the two ranks around it.
-- columns: vendor text, model text, destination text, devices int, volunteers int, p25_s float, median_s float, p75_s float, bytes_out int, bytes_in int
WITH boots AS (
  SELECT vendor, model, destination, boot_pseudonym,
         min(device_pseudonym) AS device, min(agent_id) AS agent,
         min(seconds_since_boot) AS first_s,
         sum(CAST(bytes_out AS DECIMAL(38, 0))) AS bytes_out,
         sum(CAST(bytes_in AS DECIMAL(38, 0))) AS bytes_in
  FROM ${dest_flows}
  GROUP BY vendor, model, destination, boot_pseudonym
),
devices AS (
  SELECT vendor, model, destination, count(*) AS devices
  FROM (SELECT vendor, model, destination, device FROM boots WHERE device IS NOT NULL
        GROUP BY vendor, model, destination, device)
  GROUP BY vendor, model, destination
),
volunteers AS (
  SELECT vendor, model, destination, count(*) AS volunteers
  FROM (SELECT vendor, model, destination, agent FROM boots WHERE agent IS NOT NULL
        GROUP BY vendor, model, destination, agent)
  GROUP BY vendor, model, destination
),
-- The groups that pass the thresholds, with their boots that say when
-- after boot they made contact (n) and their bytes.
published AS (
  SELECT g.vendor, g.model, g.destination, d.devices, v.volunteers, g.n, g.bytes_out, g.bytes_in
  FROM (SELECT vendor, model, destination, count(first_s) AS n,
               CAST(least(sum(bytes_out), 9223372036854775807) AS BIGINT) AS bytes_out,
               CAST(least(sum(bytes_in), 9223372036854775807) AS BIGINT) AS bytes_in
        FROM boots
        GROUP BY vendor, model, destination) g
  JOIN devices d ON (d.vendor IS NOT DISTINCT FROM g.vendor) AND (d.model IS NOT DISTINCT FROM g.model)
                AND (d.destination IS NOT DISTINCT FROM g.destination)
  JOIN volunteers v ON (v.vendor IS NOT DISTINCT FROM g.vendor) AND (v.model IS NOT DISTINCT FROM g.model)
                   AND (v.destination IS NOT DISTINCT FROM g.destination)
  WHERE d.devices >= ${min_devices} AND v.volunteers >= ${min_volunteers}
),
-- Each published group's boots in order of their first contact, rank
-- from 0, and the ranks each quartile reads.
ranked AS (
  SELECT vendor, model, destination, n, first_s,
         row_number() OVER (PARTITION BY vendor, model, destination ORDER BY first_s) - 1 AS i,
         0.25 * (n - 1) AS q1, 0.5 * (n - 1) AS q2, 0.75 * (n - 1) AS q3
  FROM (SELECT b.vendor, b.model, b.destination, p.n, b.first_s
        FROM boots b
        JOIN published p ON (p.vendor IS NOT DISTINCT FROM b.vendor) AND (p.model IS NOT DISTINCT FROM b.model)
                        AND (p.destination IS NOT DISTINCT FROM b.destination)
        WHERE b.first_s IS NOT NULL)
),
ends AS (
  SELECT vendor, model, destination, q1, q2, q3,
         max(first_s) FILTER (WHERE i = floor(q1)) AS q1_lo, max(first_s) FILTER (WHERE i = ceil(q1)) AS q1_hi,
         max(first_s) FILTER (WHERE i = floor(q2)) AS q2_lo, max(first_s) FILTER (WHERE i = ceil(q2)) AS q2_hi,
         max(first_s) FILTER (WHERE i = floor(q3)) AS q3_lo, max(first_s) FILTER (WHERE i = ceil(q3)) AS q3_hi
  FROM ranked
  WHERE i IN (floor(q1), ceil(q1), floor(q2), ceil(q2), floor(q3), ceil(q3))
  GROUP BY vendor, model, destination, q1, q2, q3
)
SELECT p.vendor, p.model, p.destination, p.devices, p.volunteers,
       e.q1_lo + (e.q1_hi - e.q1_lo) * (e.q1 - floor(e.q1)) AS p25_s,
       e.q2_lo + (e.q2_hi - e.q2_lo) * (e.q2 - floor(e.q2)) AS median_s,
       e.q3_lo + (e.q3_hi - e.q3_lo) * (e.q3 - floor(e.q3)) AS p75_s,
       p.bytes_out, p.bytes_in
FROM published p
LEFT JOIN ends e ON (e.vendor IS NOT DISTINCT FROM p.vendor) AND (e.model IS NOT DISTINCT FROM p.model)
                AND (e.destination IS NOT DISTINCT FROM p.destination)
