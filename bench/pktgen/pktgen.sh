#!/usr/bin/env bash
# pktgen.sh: send UDP packets to a VIP with the kernel's packet generator
# (pktgen, /proc/net/pktgen), for measuring the balancer on real hosts.
#
# Run it on a traffic-generator host whose NIC is linked (directly or
# through a switch) to the balancer's interface or to the router in front
# of it. Every packet goes to the VIP's UDP port; the source port counts up
# through a range, so the packets are that many flows, which the balancer's
# NIC spreads over its queues (RSS) and Maglev over the backends.
#
# Needs root and a kernel with pktgen (CONFIG_NET_PKTGEN, `modprobe
# pktgen`). See bench/README.md for the figures to read on the balancer.
#
# Example: 4 threads (CPUs 0-3), 10 million packets each, no rate limit:
#   sudo bench/pktgen/pktgen.sh -i eth1 -m 3c:fd:fe:00:00:01 \
#        -d 203.0.113.10 -p 9 -s 1024-65535 -c 10000000 -t 4
set -euo pipefail

PGDIR=/proc/net/pktgen

usage() {
    cat <<'EOF'
Usage: pktgen.sh -i DEV -m MAC -d VIP [options]

Required:
  -i DEV        interface to send from
  -m MAC        destination MAC: the next hop (the balancer's interface,
                or the router's port in front of it)
  -d VIP        destination address: the VIP (IPv4, or IPv6)

Options:
  -p PORT       destination UDP port (default 9, discard: backends answer
                nothing)
  -s MIN-MAX    source UDP port range, one flow per port (default 1024-65535)
  -S ADDR       source address (default: DEV's first address of the VIP's
                family)
  -c COUNT      packets per thread; 0 sends until Ctrl-C (default 10000000)
  -r PPS        rate limit per thread, packets per second; 0 = as fast as
                possible (default 0)
  -t THREADS    sending threads, one per CPU (default 1)
  -f CPU        first CPU; threads use CPU..CPU+THREADS-1 (default 0)
  -l SIZE       frame size in bytes, without the FCS (default and minimum:
                60 for IPv4, the 64-byte minimum on the wire; 78 for IPv6,
                room for pktgen's 16-byte payload header)
  -b BURST      packets queued per doorbell (xmit_more). Each burst repeats
                one packet, so one flow per burst (default 1)
  -n            dry run: print what would be written to /proc/net/pktgen
  -h            this help
EOF
}

die() {
    printf 'pktgen.sh: %s\n' "$*" >&2
    exit 1
}

DEV=""
DST_MAC=""
DST=""
PORT=9
SPORTS="1024-65535"
SRC=""
COUNT=10000000
RATE=0
THREADS=1
FIRST_CPU=0
SIZE=""
BURST=1
DRY_RUN=0

while getopts ":i:m:d:p:s:S:c:r:t:f:l:b:nh" opt; do
    case "$opt" in
        i) DEV=$OPTARG ;;
        m) DST_MAC=$OPTARG ;;
        d) DST=$OPTARG ;;
        p) PORT=$OPTARG ;;
        s) SPORTS=$OPTARG ;;
        S) SRC=$OPTARG ;;
        c) COUNT=$OPTARG ;;
        r) RATE=$OPTARG ;;
        t) THREADS=$OPTARG ;;
        f) FIRST_CPU=$OPTARG ;;
        l) SIZE=$OPTARG ;;
        b) BURST=$OPTARG ;;
        n) DRY_RUN=1 ;;
        h)
            usage
            exit 0
            ;;
        :) die "option -$OPTARG needs a value (-h for help)" ;;
        *) die "unknown option -$OPTARG (-h for help)" ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -eq 0 ]] || die "unexpected arguments: $* (-h for help)"

# Checks the arguments before anything is written.
[[ -n $DEV ]] || die "-i DEV is required (-h for help)"
[[ -n $DST_MAC ]] || die "-m MAC is required (-h for help)"
[[ -n $DST ]] || die "-d VIP is required (-h for help)"
[[ $DEV =~ ^[A-Za-z0-9_.:-]{1,15}$ ]] || die "'$DEV' is not an interface name"
[[ $DST_MAC =~ ^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$ ]] || die "'$DST_MAC' is not a MAC address (aa:bb:cc:dd:ee:ff)"
if [[ $DST == *:* ]]; then
    FAMILY=6
    [[ $DST =~ ^[0-9A-Fa-f:]+$ ]] || die "'$DST' is not an IPv6 address"
else
    FAMILY=4
    [[ $DST =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "'$DST' is not an IPv4 address"
fi
# Ethernet + IP + UDP headers and pktgen's 16-byte header; IPv4 frames
# are padded to Ethernet's 60-byte minimum anyway.
MIN_SIZE=$((FAMILY == 4 ? 60 : 78))
SIZE=${SIZE:-${MIN_SIZE}}
for v in PORT COUNT RATE THREADS FIRST_CPU SIZE BURST; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "${v} must be a non-negative integer, not '${!v}'"
done
((PORT >= 1 && PORT <= 65535)) || die "port $PORT is outside 1-65535"
((THREADS >= 1)) || die "at least one thread"
((BURST >= 1)) || die "burst must be at least 1"
((SIZE >= MIN_SIZE && SIZE <= 9000)) || die "frame size $SIZE is outside $MIN_SIZE-9000"
[[ $SPORTS =~ ^([0-9]+)-([0-9]+)$ ]] || die "source ports '$SPORTS' are not MIN-MAX"
SPORT_MIN=${BASH_REMATCH[1]}
SPORT_MAX=${BASH_REMATCH[2]}
((SPORT_MIN >= 1 && SPORT_MIN <= SPORT_MAX && SPORT_MAX <= 65535)) || die "source ports $SPORTS: need 1 <= MIN <= MAX <= 65535"
NCPUS=$(getconf _NPROCESSORS_ONLN)
((FIRST_CPU + THREADS <= NCPUS)) || die "CPUs $FIRST_CPU-$((FIRST_CPU + THREADS - 1)) do not exist ($NCPUS online)"

if ((DRY_RUN == 0)); then
    ((EUID == 0)) || die "pktgen needs root"
    [[ -d /sys/class/net/$DEV ]] || die "no interface $DEV"
fi

if [[ -z $SRC ]]; then
    if ((DRY_RUN == 1)) && [[ ! -d /sys/class/net/$DEV ]]; then
        SRC="<address of $DEV>"
    else
        # First global address of the VIP's family on DEV.
        SRC=$(ip -o "-$FAMILY" addr show dev "$DEV" scope global | awk '{ split($4, a, "/"); print a[1]; exit }')
        [[ -n $SRC ]] || die "$DEV has no IPv$FAMILY address: give one with -S"
    fi
fi

# Writes one pktgen command into a control file and checks the kernel's
# verdict, which pktgen reports in the file itself.
pg() {
    local file=$1
    shift
    if ((DRY_RUN == 1)); then
        printf 'echo "%s" > %s\n' "$*" "$file"
        return 0
    fi
    printf '%s\n' "$*" >"$file" || die "writing '$*' to $file failed"
    if ! grep -q "Result: OK" "$file"; then
        die "pktgen refused '$*' in $file: $(grep 'Result:' "$file" || true)"
    fi
}

if ((DRY_RUN == 0)) && [[ ! -d $PGDIR ]]; then
    modprobe pktgen || die "this kernel has no pktgen module (CONFIG_NET_PKTGEN)"
    [[ -d $PGDIR ]] || die "$PGDIR missing after modprobe pktgen"
fi

DEVICES=()
for ((t = 0; t < THREADS; t++)); do
    cpu=$((FIRST_CPU + t))
    thread="$PGDIR/kpktgend_$cpu"
    if ((DRY_RUN == 0)) && [[ ! -e $thread ]]; then
        die "no pktgen thread for CPU $cpu ($thread)"
    fi
    # One pktgen device per thread: DEV@t, sending from CPU cpu.
    name="$DEV@$t"
    pg "$thread" "rem_device_all"
    pg "$thread" "add_device $name"
    DEVICES+=("$name")
    d="$PGDIR/$name"
    pg "$d" "count $COUNT"
    pg "$d" "pkt_size $SIZE"     # without the FCS, which the NIC adds
    pg "$d" "clone_skb 0"        # a fresh packet each time: ports vary
    pg "$d" "burst $BURST"
    pg "$d" "delay 0"
    if ((RATE > 0)); then
        pg "$d" "ratep $RATE"
    fi
    pg "$d" "flag QUEUE_MAP_CPU" # the TX queue of the sending CPU
    pg "$d" "flag NO_TIMESTAMP"
    pg "$d" "dst_mac $DST_MAC"
    if ((FAMILY == 4)); then
        pg "$d" "dst_min $DST"
        pg "$d" "dst_max $DST"
        pg "$d" "src_min $SRC"
        pg "$d" "src_max $SRC"
    else
        pg "$d" "dst6 $DST"
        pg "$d" "src6 $SRC"
    fi
    # A real UDP checksum (IPv6 forbids a zero one; the NIC may compute it).
    pg "$d" "flag UDPCSUM"
    pg "$d" "udp_dst_min $PORT"
    pg "$d" "udp_dst_max $PORT"
    # Sequential source ports (no UDPSRC_RND): each thread walks the range.
    pg "$d" "udp_src_min $SPORT_MIN"
    pg "$d" "udp_src_max $SPORT_MAX"
done

stop() {
    if ((DRY_RUN == 0)); then
        printf 'stop\n' >"$PGDIR/pgctrl" 2>/dev/null || true
    fi
}
trap stop INT TERM

count_text="$COUNT packets each"
if ((COUNT == 0)); then
    count_text="sending until Ctrl-C"
fi
rate_text="no rate limit"
if ((RATE > 0)); then
    rate_text="$RATE pps per thread"
fi
printf 'pktgen: %s thread(s) on %s, CPUs %s-%s, %s, %s; %s-byte frames to %s port %s via %s, source %s ports %s\n' \
    "$THREADS" "$DEV" "$FIRST_CPU" "$((FIRST_CPU + THREADS - 1))" "$count_text" "$rate_text" \
    "$SIZE" "$DST" "$PORT" "$DST_MAC" "$SRC" "$SPORTS" >&2

if ((DRY_RUN == 1)); then
    printf 'echo "start" > %s\n' "$PGDIR/pgctrl"
    exit 0
fi
# Blocks until every thread has sent its count; Ctrl-C interrupts it (the
# write then fails, and the trap has stopped the threads).
printf 'start\n' >"$PGDIR/pgctrl" || true
trap - INT TERM

for name in "${DEVICES[@]}"; do
    printf '%s: ' "$name"
    # "Result: OK: <usec>(c..+d..) usec, <n> (<size>byte,0frags)" and
    # "<pps>pps <Mb/sec>Mb/sec (...) errors: <n>"
    grep -A2 '^Result:' "$PGDIR/$name" | tr -s ' \n' ' '
    printf '\n'
done
