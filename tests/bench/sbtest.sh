# Sourced by the benchmark scripts: sbtest_workload N prints the SQL of N inserts (in
# transactions of 1,000 rows) into a sysbench-style bench.sbtest1, then an update of every one
# of those rows, 1,000 per transaction: 2N row changes on N keys.
sbtest_workload() {
  local chunks=$(( ($1 + 999) / 1000 )) i
  for ((i = 0; i < chunks; i++)); do
    echo "INSERT INTO bench.sbtest1 (k, c, pad) SELECT FLOOR(RAND()*1000000), REPEAT(LPAD(FLOOR(RAND()*1e10), 10, '0'), 12), REPEAT(LPAD(FLOOR(RAND()*1e10), 10, '0'), 6) FROM seq_1_to_1000;"
  done
  for ((i = 0; i < chunks; i++)); do
    echo "UPDATE bench.sbtest1 SET k = k + 1, c = REVERSE(c) WHERE id > $((i * 1000)) AND id <= $((i * 1000 + 1000));"
  done
}
