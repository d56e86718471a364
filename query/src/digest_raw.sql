-- The records of ${input} (rows in `flows` schema) in the form of a
-- digest (digest.sql), each record its own group: what the digest of a
-- file whose records share no group would hold, without computing it.
SELECT vendor, model, os_version, device_pseudonym, agent_id, boot_pseudonym, consent, source,
       domain, transport, dst_ip, dst_port,
       window_start, window_start AS window_last,
       seconds_since_boot,
       CAST(bytes_out AS DECIMAL(38, 0)) AS bytes_out,
       CAST(bytes_in AS DECIMAL(38, 0)) AS bytes_in,
       connections,
       interval_mean_s,
       CASE WHEN interval_mean_s > 0 AND interval_cv IS NOT NULL AND connections IS NOT NULL
            THEN interval_cv END AS interval_cv,
       CAST(1 AS BIGINT) AS records
FROM ${input}
