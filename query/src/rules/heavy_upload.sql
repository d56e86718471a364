-- name: heavy_upload
-- title: Destinations that receive far more than they send
-- description: Per model, destinations (host names) to which the model's devices send at least min_ratio times the bytes they receive, summed over all devices and boots: telemetry, logs, recordings or backups leaving the device. Transport payload bytes, so TLS overhead counts on both sides; DNS lookups are left out.
-- param: min_ratio = 5 | bytes out per byte in
-- param: min_bytes_out = 50000 | fewest bytes sent by the model's devices in all
-- param: min_devices = 5 | fewest distinct devices that must send to the destination
-- columns: vendor, model, domain, devices, bytes_out, bytes_in, ratio
SELECT vendor, model, domain,
       count(DISTINCT device_pseudonym) AS devices,
       sum(bytes_out) AS bytes_out,
       sum(bytes_in) AS bytes_in,
       round(CAST(sum(bytes_out) AS DOUBLE) / greatest(sum(bytes_in), 1), 1) AS ratio
FROM flows
WHERE domain IS NOT NULL AND transport <> 'dns'
GROUP BY vendor, model, domain
HAVING count(DISTINCT device_pseudonym) >= ${min_devices}
   AND sum(bytes_out) >= ${min_bytes_out}
   AND CAST(sum(bytes_out) AS DOUBLE) >= ${min_ratio} * greatest(sum(bytes_in), 1)
ORDER BY ratio DESC, bytes_out DESC, vendor, model, domain
