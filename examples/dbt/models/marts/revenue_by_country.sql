-- Orders and revenue per customer country, cancelled orders left out: built on the current-state
-- models that `binlake dbt sources` generates (highest _binlake_version per key, no tombstones).
select
    c.country,
    count(*) as orders,
    sum(o.amount) as revenue
from {{ ref('stg_shop__orders') }} as o
join {{ ref('stg_shop__customers') }} as c on c.id = o.customer_id
where o.status <> 'cancelled'
group by c.country
