-- name: new_after_update
-- title: Destinations a model contacts only since a firmware update
-- description: Destinations (host names) that most devices of a model running a newer firmware version contact, while none of the devices on an earlier version of that model ever did. Versions are ordered by when they were first seen. Such a destination arrived with the update: a new service, a new tracker, or data the old firmware did not send.
-- param: min_share = 0.5 | share of the newer firmware's devices that must contact the destination
-- param: min_devices = 5 | fewest devices that must contact it on the newer firmware, and fewest devices on an earlier firmware that never did
-- columns: vendor, model, domain, before, after, devices, after_devices, share, first_contact, sources
WITH fw AS (
  SELECT vendor, model, os_version, min(window_start) AS first_seen, count(DISTINCT device_pseudonym) AS devices
  FROM flows
  GROUP BY vendor, model, os_version
),
-- A destination no name was seen for counts under its unusual port or its
-- address's network (unnamed_destination).
seen AS (
  SELECT vendor, model, os_version, CASE WHEN domain IS NULL THEN unnamed_destination(transport, dst_ip, CAST(dst_port AS VARCHAR)) ELSE domain END AS domain
  FROM flows
  GROUP BY 1, 2, 3, 4
),
-- Destinations a newer firmware version contacts and an older one (with at
-- least min_devices devices) never did; devices are counted for these alone.
candidates AS (
  SELECT s.vendor, s.model, s.domain, o.os_version AS before, n.os_version AS after, n.devices AS after_devices
  FROM seen s
  JOIN fw n ON n.vendor = s.vendor AND n.model = s.model AND n.os_version = s.os_version
  JOIN fw o ON o.vendor = n.vendor AND o.model = n.model AND o.first_seen < n.first_seen
  LEFT JOIN seen p ON p.vendor = o.vendor AND p.model = o.model AND p.os_version = o.os_version
                  AND p.domain = s.domain
  WHERE p.domain IS NULL
    AND o.devices >= ${min_devices}
    AND n.devices >= ${min_devices}
),
contacts AS (
  SELECT f.vendor, f.model, f.os_version, f.domain,
         count(DISTINCT f.device_pseudonym) AS devices, min(f.window_start) AS first_contact,
         array_to_string(array_sort(array_agg(DISTINCT f.source)), ', ') AS sources
  FROM (SELECT vendor, model, os_version, device_pseudonym, window_start,
               CASE WHEN domain IS NULL THEN unnamed_destination(transport, dst_ip, CAST(dst_port AS VARCHAR)) ELSE domain END AS domain,
               coalesce(source, 'unspecified') AS source
        FROM flows) f
  JOIN (SELECT DISTINCT vendor, model, after, domain FROM candidates) k
    ON f.vendor = k.vendor AND f.model = k.model AND f.os_version = k.after AND f.domain = k.domain
  GROUP BY f.vendor, f.model, f.os_version, f.domain
),
pairs AS (
  SELECT k.vendor, k.model, k.domain, k.before, k.after, c.devices, k.after_devices, c.first_contact, c.sources
  FROM candidates k
  JOIN contacts c ON c.vendor = k.vendor AND c.model = k.model AND c.os_version = k.after AND c.domain = k.domain
  WHERE c.devices >= ${min_devices}
    AND CAST(c.devices AS DOUBLE) / k.after_devices >= ${min_share}
)
SELECT vendor, model, domain,
       array_to_string(array_sort(array_agg(DISTINCT before)), ', ') AS before,
       after, max(devices) AS devices, max(after_devices) AS after_devices,
       round(CAST(max(devices) AS DOUBLE) / max(after_devices), 3) AS share,
       min(first_contact) AS first_contact, min(sources) AS sources
FROM pairs
GROUP BY vendor, model, domain, after
ORDER BY share DESC, devices DESC, vendor, model, domain
