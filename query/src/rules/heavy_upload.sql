-- name: heavy_upload
-- title: Destinations that receive far more than they send
-- description: Per model, destinations (host names) to which the model's devices send at least min_ratio times the bytes they receive, summed over all devices and boots: telemetry, logs, recordings or backups leaving the device. Transport payload bytes, so TLS overhead counts on both sides; DNS lookups are left out.
-- param: min_ratio = 5 | bytes out per byte in
-- param: min_bytes_out = 50000 | fewest bytes sent by the model's devices in all
-- param: min_devices = 5 | fewest distinct devices that must send to the destination
-- columns: vendor, model, domain, devices, bytes_out, bytes_in, ratio, sources
-- public: bytes_out, bytes_in, ratio
-- needs: bytes_out, bytes_in
WITH sent AS (
  SELECT vendor, model, domain, device_pseudonym, bytes_out, bytes_in, coalesce(source, 'unspecified') AS source
  FROM flows
  WHERE domain IS NOT NULL AND transport <> 'dns' AND bytes_out IS NOT NULL AND bytes_in IS NOT NULL
),
-- Summed as 38-digit decimals, which no number of records can wrap.
totals AS (
  SELECT vendor, model, domain,
         sum(CAST(bytes_out AS DECIMAL(38, 0))) AS bytes_out, sum(CAST(bytes_in AS DECIMAL(38, 0))) AS bytes_in
  FROM sent
  GROUP BY vendor, model, domain
  HAVING sum(CAST(bytes_out AS DECIMAL(38, 0))) >= ${min_bytes_out}
     AND CAST(sum(CAST(bytes_out AS DECIMAL(38, 0))) AS DOUBLE)
         >= ${min_ratio} * greatest(CAST(sum(CAST(bytes_in AS DECIMAL(38, 0))) AS DOUBLE), 1)
),
reach AS (
  SELECT s.vendor, s.model, s.domain, count(DISTINCT s.device_pseudonym) AS devices,
         array_to_string(array_sort(array_agg(DISTINCT s.source)), ', ') AS sources
  FROM sent s
  JOIN totals t ON s.vendor = t.vendor AND s.model = t.model AND s.domain = t.domain
  GROUP BY s.vendor, s.model, s.domain
)
SELECT t.vendor, t.model, t.domain, r.devices,
       CAST(least(t.bytes_out, 9223372036854775807) AS BIGINT) AS bytes_out,
       CAST(least(t.bytes_in, 9223372036854775807) AS BIGINT) AS bytes_in,
       round(CAST(t.bytes_out AS DOUBLE) / greatest(CAST(t.bytes_in AS DOUBLE), 1), 1) AS ratio, r.sources
FROM totals t
JOIN reach r ON r.vendor = t.vendor AND r.model = t.model AND r.domain = t.domain
WHERE r.devices >= ${min_devices}
ORDER BY ratio DESC, bytes_out DESC, vendor, model, domain
