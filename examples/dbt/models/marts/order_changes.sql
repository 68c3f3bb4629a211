-- Every change of every order, loaded incrementally with _binlake_version as the cursor: each run
-- takes only the changes with a version above the highest one already loaded. Versions strictly
-- increase with source commit order and stay the same across restarts and failover, so nothing
-- is skipped and (with the unique key) nothing is loaded twice.
{{ config(materialized='incremental', unique_key=['id', '_binlake_version']) }}
select
    id,
    status,
    amount,
    _binlake_op as op,
    _binlake_deleted as deleted,
    _binlake_commit_ts as committed_at,
    _binlake_version
from {{ source('shop', 'orders') }}
{% if is_incremental() %}
where _binlake_version > (select coalesce(max(_binlake_version), 0) from {{ this }})
{% endif %}
