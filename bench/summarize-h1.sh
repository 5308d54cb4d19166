#!/usr/bin/env bash
# Markdown tables from a run of bench/run-h1.sh:   bench/summarize-h1.sh [RESULTS_DIR]
# - load: median over reps of RPS / p50 / p99, ratio vs direct and vs nginx (medians),
#   RSS of the proxy sampled mid-run (max over reps);
# - memory after load and per idle keep-alive connection.
RES=${1:-$(cd "$(dirname "$0")" && pwd)/results}
awk -F'\t' 'FNR>1' "$RES/runs.tsv" | awk -F'\t' '
function med(s,   a, n, t, i, j) { n = split(s, a, " ");
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j+1] = a[j]; a[j+1] = t }
    return (n % 2) ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
function mn(s,  a,n,i,m){n=split(s,a," ");m=a[1];for(i=2;i<=n;i++)if(a[i]<m)m=a[i];return m}
function mx(s,  a,n,i,m){n=split(s,a," ");m=a[1];for(i=2;i<=n;i++)if(a[i]>m)m=a[i];return m}
{ k=$1; if (!(k in seen)) order[++no]=k; seen[k]++
  rps[k]=rps[k]" "$3; p50[k]=p50[k]" "$4; p99[k]=p99[k]" "$5; err[k]+=$6; if ($7 != "NaN" && $7 != "") rss[k]=rss[k]" "$7
  rq[k]=rq[k]" "$10 }
END {
  d = ("direct" in seen) ? med(rps["direct"]) : 0; g = ("nginx" in seen) ? med(rps["nginx"]) : 0
  print "| config | n | median RPS | min-max RPS | vs direct | vs nginx | p50 ms | p99 ms (min-max) | errors | proxy RSS under load KiB | proxy rq-wait max % |"
  print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for (o = 1; o <= no; o++) { k = order[o]; r = med(rps[k])
    printf "| %s | %d | %.0f | %.0f-%.0f | %s | %s | %.3f | %.3f (%.3f-%.3f) | %d | %s | %s |\n", k, seen[k], r, mn(rps[k]), mx(rps[k]),
      (d > 0 ? sprintf("%.2f", r / d) : "-"), (g > 0 ? sprintf("%.2f", r / g) : "-"),
      med(p50[k]), med(p99[k]), mn(p99[k]), mx(p99[k]), err[k],
      (k == "direct" || rss[k] == "" ? "-" : mx(rss[k])), (k == "direct" ? "-" : sprintf("%.1f", mx(rq[k])))
  }
}'
if [ -s "$RES/memory.tsv" ]; then
    echo
    echo "| process | VmRSS after load KiB | threads |"
    echo "|---|---:|---:|"
    awk -F'\t' 'FNR>1 { printf "| %s | %s | %s |\n", $1, $3, $4 }' "$RES/memory.tsv"
fi
if [ -s "$RES/idle.tsv" ]; then
    echo
    echo "| proxy | idle keep-alive conns open | RSS before KiB | RSS with them KiB | KiB per idle conn |"
    echo "|---|---:|---:|---:|---:|"
    awk -F'\t' 'FNR>1 { printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }' "$RES/idle.tsv"
fi
