# The WAN profile of scripts/bench.sh (--wan), sourced by it: the relay,
# the upstream sink and Postfix 20 ms of round trip apart, all inside a
# network namespace of their own on 127.0.0.1 only.
#
# The namespace ($WAN_NETNS, default smarthost-wan) gets its loopback up
# and `tc qdisc add dev lo root netem delay $WAN_DELAY` (10ms: every
# packet waits 10 ms, so a round trip is 20 ms). A kernel without netem
# (CONFIG_NET_SCH_NETEM unset, as on some VMs) gets the same delay from
# `smtpload delay` instead: a relay of bytes in front of each listener
# (relay, Postfix, sink) that holds every chunk back $WAN_DELAY each way.
# That adds latency only, with no effect on TCP's windows; for a dialogue
# of short commands and replies, as SMTP is, the round trips are the same.
#
# Per run and for the upstream's max_connections (Postfix:
# smtp_destination_concurrency_limit) 1 and 8: smarthost as it is
# (PIPELINING and CHUNKING: MAIL, RCPT and BDAT with the message in one
# write), smarthost with CHUNKING disabled (pipelined MAIL, RCPT, DATA,
# then the message), with PIPELINING disabled too (one command per round
# trip, as go-smtp's client does), the --baseline build if given, and
# Postfix. Both relays take submissions over the same delayed link, from
# $WAN_SESSIONS sessions (64: enough that the submissions outrun the
# upstream leg), M=0, no DKIM; 250 messages per upstream connection.

# wan_enter re-runs bench.sh inside the namespace, once the binaries are
# built (the namespace has no route to the module proxy).
wan_enter() {
  local ns=${WAN_NETNS:-smarthost-wan}
  ip netns add "$ns"
  trap "ip netns del '$ns'" EXIT # which ends what still runs in it
  ip netns exec "$ns" ip link set lo up
  local how=netem
  if ! ip netns exec "$ns" tc qdisc add dev lo root netem delay "$WAN_DELAY" 2>/dev/null; then
    how="smtpload delay (this kernel has no netem)"
  fi
  BENCH_NETNS=$ns WAN_HOW=$how ip netns exec "$ns" bash "$0" "$@"
  exit
}

# wan_port PORT: where to reach PORT across the delayed link: PORT itself
# with netem (and outside the WAN profile), else the delaying relay in
# front of it, on PORT+100 (wan_delays starts them).
wan_port() {
  case ${WAN_HOW:-netem} in
    netem) echo "$1" ;;
    *) echo $(($1 + 100)) ;;
  esac
}

wan_delays() {
  [ "${WAN_HOW:-netem}" = netem ] && return
  local p
  for p in $SINK_PORT $RELAY_PORT $PF_PORT; do
    $LOAD delay --listen "127.0.0.1:$((p + 100))" --to "127.0.0.1:$p" --delay "$WAN_DELAY" >> "$W/delay.log" 2>&1 &
    WAN_PIDS+=($!)
  done
  trap 'kill "${WAN_PIDS[@]}" 2>/dev/null || true' EXIT
}

# wan_run: one run of every profile.
wan_run() {
  local c
  [ ${#WAN_PIDS[@]} -gt 0 ] || wan_delays
  for c in 1 8; do
    export UP_CONNS=$c UP_PORT=$(wan_port $SINK_PORT)
    TOTAL=$((250 * c)) SESSIONS=$WAN_SESSIONS run_smarthost "smarthost_wan_c$c" none 0
    TOTAL=$((250 * c)) SESSIONS=$WAN_SESSIONS UP_EXTRA=", disable_extensions: [chunking]" \
      run_smarthost "smarthost_wan_c${c}_data" none 0
    TOTAL=$((250 * c)) SESSIONS=$WAN_SESSIONS UP_EXTRA=", disable_extensions: [pipelining, chunking]" \
      run_smarthost "smarthost_wan_c${c}_lockstep" none 0
    if [ -n "$BASELINE" ]; then
      TOTAL=$((250 * c)) SESSIONS=$WAN_SESSIONS SHBIN=$W/bin/smarthost-base run_smarthost "baseline_wan_c$c" none 0
    fi
    TOTAL=$((250 * c)) SESSIONS=$WAN_SESSIONS run_postfix "postfix_wan_c$c" none 0 no
  done
  unset UP_CONNS UP_PORT
}

# wan_report: medians, per connection, and ratios.
wan_report() {
  echo "# WAN profile: $WAN_DELAY each way ($WAN_HOW), $WAN_SESSIONS sessions, M=0, no DKIM; medians of $RUNS runs"
  local c n m
  for c in 1 8; do
    for n in smarthost_wan_c$c smarthost_wan_c${c}_data smarthost_wan_c${c}_lockstep baseline_wan_c$c postfix_wan_c$c; do
      m=$(median "$n"); [ "$m" = 0 ] && continue
      printf '%-30s %8s msg/s  %7s msg/s per connection\n' "$n" "$m" "$(awk -v m="$m" -v c=$c 'BEGIN { printf "%.1f", m / c }')"
    done | tee -a "$W/medians"
    printf 'max_connections %s: smarthost / postfix %s, smarthost / one command per round trip %s' \
      $c "$(ratio smarthost_wan_c$c postfix_wan_c$c)" "$(ratio smarthost_wan_c$c smarthost_wan_c${c}_lockstep)"
    [ -n "$BASELINE" ] && printf ', smarthost / baseline %s' "$(ratio smarthost_wan_c$c baseline_wan_c$c)"
    echo
  done
}
