#!/bin/sh
# /init of the vvhost test guest (busybox ash, PID 1).
#
# The initramfs (built by vvhost.guest.build_guest):
#
#   /init                     this script
#   /bin/busybox, /bin/sh     busybox-static; the other applets are linked at boot
#   /dev/console              char 5:1, so PID 1 has a console before devtmpfs
#   /lib/modules/*.ko         virtio_blk and everything it needs, uncompressed
#   /lib/modules/order        their names, one a line, in load order
#
# Kernel command line (see vvhost.guest.guest_cmdline):
#
#   console=ttyS0 quiet panic=-1 vvtest=CMD;CMD;... [vvkeep=1]
#
# Every result is one console line "VVTEST ...":
#
#   VVTEST BEGIN
#   VVTEST write N P OFF LEN ok|FAIL        VVTEST verify N P OFF LEN ok|FAIL
#   VVTEST sum N <sha256>                   VVTEST size N <bytes>
#   VVTEST discard N OFF LEN ok|FAIL        (blkdiscard of LEN MiB from OFF MiB)
#   VVTEST counter <n>                      VVTEST sleep S ok
#   VVTEST wait <n>    (then blocks until a line arrives on the second serial port)
#   VVTEST go <n>
#   VVTEST error <what>
#   VVTEST END
#
# The data stream of pattern P covering 512-byte sectors [a, b) of a disk is,
# for each sector s, the text "vvtest P s" padded with spaces to 511 bytes and
# a newline: every sector names its pattern and its own position, so a block
# written to the wrong place fails verification. vvhost.guest.pattern_bytes
# produces the same bytes on the host.

export PATH=/bin
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
set -f

say() {
    echo "VVTEST $*"
}

while read -r mod; do
    [ -n "$mod" ] || continue
    insmod "/lib/modules/$mod.ko" || say "error insmod $mod"
done < /lib/modules/order

# wait_disk N: wait up to ~10 s for /dev/N; 1 if it never shows up.
wait_disk() {
    case "$1" in
        vd[a-z] | vd[a-z][a-z]) ;;
        *) say "error bad disk $1"; return 1 ;;
    esac
    i=0
    while [ ! -b "/dev/$1" ]; do
        i=$((i + 1))
        if [ "$i" -gt 100 ]; then
            say "error no disk $1"
            return 1
        fi
        sleep 0.1
    done
}

# number X: X is a decimal integer (no sign, no leading junk).
number() {
    case "$1" in
        '' | *[!0-9]*) return 1 ;;
    esac
}

# pattern P: P is 1-16 characters of [A-Za-z0-9].
pattern() {
    case "$1" in
        '' | *[!A-Za-z0-9]* | ?????????????????*) return 1 ;;
    esac
}

# stream P OFF LEN: the pattern's bytes for LEN MiB from OFF MiB.
stream() {
    awk -v p="$1" -v a=$(($2 * 2048)) -v b=$((($2 + $3) * 2048)) \
        'BEGIN { for (s = a; s < b; s++) printf "%-511s\n", "vvtest " p " " s }'
}

do_write() {
    wait_disk "$1" || return 0
    if stream "$2" "$3" "$4" |
        dd of="/dev/$1" bs=1M seek="$3" count="$4" iflag=fullblock conv=fsync 2>/dev/null &&
        sync; then
        say "write $1 $2 $3 $4 ok"
    else
        say "write $1 $2 $3 $4 FAIL"
    fi
}

do_verify() {
    wait_disk "$1" || return 0
    want=$(stream "$2" "$3" "$4" | sha256sum)
    got=$(dd if="/dev/$1" bs=1M skip="$3" count="$4" iflag=direct 2>/dev/null | sha256sum)
    if [ "${want%% *}" = "${got%% *}" ]; then
        say "verify $1 $2 $3 $4 ok"
    else
        say "verify $1 $2 $3 $4 FAIL"
    fi
}

do_sum() {
    wait_disk "$1" || return 0
    got=$(dd if="/dev/$1" bs=1M iflag=direct 2>/dev/null | sha256sum)
    say "sum $1 ${got%% *}"
    say "size $1 $(blockdev --getsize64 "/dev/$1")"
}

# do_counter N OFF: never returns. Sector OFF*2048 of N holds "vvcounter n".
do_counter() {
    wait_disk "$1" || return 0
    n=0
    while :; do
        n=$((n + 1))
        printf '%-511s\n' "vvcounter $n" |
            dd of="/dev/$1" bs=512 seek=$(($2 * 2048)) count=1 conv=fsync 2>/dev/null ||
            say "error counter write $n"
        [ $((n % 10)) -eq 0 ] && say "counter $n"
    done
}

# do_wait: announce, then block until the host sends a line on /dev/ttyS1 (the
# second serial port), so the host can act between two steps of the guest.
waits=0
do_wait() {
    waits=$((waits + 1))
    if ! exec 3</dev/ttyS1; then
        say "error no second serial port"
        return 0
    fi
    stty -F /dev/ttyS1 raw -echo 2>/dev/null
    say "wait $waits"
    read -r _ <&3
    exec 3<&-
    say "go $waits"
}

# do_discard N OFF LEN: discard LEN MiB from OFF MiB, as fstrim would for free space.
do_discard() {
    wait_disk "$1" || return 0
    if blkdiscard -o $(($2 * 1048576)) -l $(($3 * 1048576)) "/dev/$1" 2>/dev/null; then
        say "discard $1 $2 $3 ok"
    else
        say "discard $1 $2 $3 FAIL"
    fi
}

do_size() {
    wait_disk "$1" || return 0
    say "size $1 $(blockdev --getsize64 "/dev/$1")"
}

# run CMD: one command, its fields separated by ':'.
run() {
    IFS=:
    # shellcheck disable=SC2086
    set -- $1
    unset IFS
    case "$1:$#" in
        write:5 | verify:5)
            if pattern "$3" && number "$4" && number "$5" && [ "$5" -gt 0 ]; then
                "do_$1" "$2" "$3" "$4" "$5"
            else
                say "error bad command $*"
            fi
            ;;
        discard:4)
            if number "$3" && number "$4" && [ "$4" -gt 0 ]; then
                do_discard "$2" "$3" "$4"
            else
                say "error bad command $*"
            fi
            ;;
        sum:2) do_sum "$2" ;;
        size:2) do_size "$2" ;;
        wait:1) do_wait ;;
        counter:3)
            if number "$3"; then do_counter "$2" "$3"; else say "error bad command $*"; fi
            ;;
        sleep:2)
            if number "$2"; then sleep "$2" && say "sleep $2 ok"; else say "error bad command $*"; fi
            ;;
        poweroff:1) return 1 ;;
        *) say "error bad command $*" ;;
    esac
}

cmds=
keep=
for word in $(cat /proc/cmdline); do
    case "$word" in
        vvtest=*) cmds=${word#vvtest=} ;;
        vvkeep=1) keep=1 ;;
    esac
done

say BEGIN
IFS=';'
# shellcheck disable=SC2086
set -- $cmds
unset IFS
for cmd in "$@"; do
    run "$cmd" || { keep=; break; }
done
say END

if [ -n "$keep" ]; then
    while :; do sleep 3600; done
fi
sync
poweroff -f
