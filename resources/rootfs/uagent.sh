#!/bin/sh
# kuml user-space test agent (busybox sh), for hosts where guest user space runs.
# Same line protocol as the in-kernel agent (resources/kernel/agent/kuml_agent.c):
#   on start:  KAGENT ready user <release>
#   request:   <seq> <cmd> [args...]
#   reply:     KAGENT <seq> ok[ <payload>]  |  KAGENT <seq> err <ERRNO>[ <message>]
# Usage: kuml-uagent /dev/<tty>    (without an argument: stdin/stdout, for testing on a host)
# poweroff/reboot end the VM; EOF on the tty reopens it (EOF on stdin exits when run without a tty).

ttydev=$1
if [ -n "$ttydev" ]; then
    exec <"$ttydev" >"$ttydev" || exit 1
    # icrnl: a CR ends a request too, as in the kernel agent (telnet clients send CR for Enter;
    # a CRLF then also gives an empty line, which repeats the ready line).
    stty raw -echo icrnl 2>/dev/null
fi
cr=$(printf '\r')
tmp=${TMPDIR:-/tmp}

ready() { echo "KAGENT ready user $(uname -r)"; }
ok()    { if [ -n "$*" ]; then echo "KAGENT $seq ok $*"; else echo "KAGENT $seq ok"; fi; }
# err <message from a failed command>: map the usual messages to errno names
err() {
    m=$(echo "$*" | head -n 1)
    case $m in
    E[A-Z]*)                 echo "KAGENT $seq err $m"; return ;;
    *"No such file"*|*"not found"*|*"No such device"*) e=ENOENT ;;
    *"File exists"*)         e=EEXIST ;;
    *"Permission denied"*|*"not permitted"*) e=EACCES ;;
    *"Not a directory"*)     e=ENOTDIR ;;
    *"Is a directory"*)      e=EISDIR ;;
    *"busy"*)                e=EBUSY ;;
    *"No space"*)            e=ENOSPC ;;
    *"Read-only"*)           e=EROFS ;;
    *"Invalid argument"*|*"invalid"*) e=EINVAL ;;
    *)                       e=EIO ;;
    esac
    echo "KAGENT $seq err $e $m"
}
need() { [ "$nargs" -eq "$1" ] || { err "EINVAL usage"; return 1; }; }
isnum() { case $1 in ''|*[!0-9]*) return 1 ;; esac; return 0; }

ready
while :; do
    if ! IFS= read -r line; then
        [ -n "$ttydev" ] || exit 0
        sleep 0.1; exec <"$ttydev"; continue
    fi
    line=${line%"$cr"}
    [ -n "$line" ] || { ready; continue; }
    set -f; set -- $line; set +f
    seq=$1; cmd=$2
    if [ -z "$cmd" ]; then err "EINVAL missing-command"; continue; fi
    shift 2; nargs=$#
    rest=${line#*"$seq"}; rest=${rest#"${rest%%[! ]*}"}; rest=${rest#"$cmd"}; rest=${rest# }
    case $cmd in
    echo)   ok "$rest" ;;
    uname)  need 0 && ok "$(uname -srm)" ;;
    read)   need 3 || continue
            if ! isnum "$2" || ! isnum "$3"; then err EINVAL
            elif [ "$3" -gt 32768 ]; then err "E2BIG read-max-32768"
            elif [ ! -e "$1" ]; then err ENOENT
            elif [ -d "$1" ]; then err EISDIR
            # the data through a file, not a pipe: a pipe's status is xxd's, so dd's failure
            # (a device node without a driver, an I/O error) would be an empty success
            elif m=$(dd if="$1" of="$tmp/.ua.read" bs=4096 skip="$2" count="$3" \
                       iflag=skip_bytes,count_bytes 2>&1); then
                 out=$(xxd -p "$tmp/.ua.read" | tr -d '\n'); rm -f "$tmp/.ua.read"; ok $out
            else rm -f "$tmp/.ua.read"; err "$m"; fi ;;
    write)  need 3 || continue
            n=$(( ${#3} / 2 ))
            if ! isnum "$2" || [ $(( ${#3} % 2 )) -ne 0 ]; then err EINVAL
            elif m=$(echo "$3" | xxd -r -p | dd of="$1" bs=4096 seek="$2" oflag=seek_bytes conv=notrunc 2>&1); then ok "$n"
            else err "$m"; fi ;;
    fill)   need 3 || continue
            if ! isnum "$2"; then err EINVAL; continue; fi
            oct=$(printf '%03o' "0x$3" 2>/dev/null) || { err EINVAL; continue; }
            head -c 1048576 /dev/zero | tr '\000' "\\$oct" > "$tmp/.ua.chunk"
            i=0
            if m=$( { while [ $i -lt "$2" ]; do cat "$tmp/.ua.chunk"; i=$((i + 1)); done; } \
                    | dd of="$1" bs=1048576 iflag=fullblock conv=fsync 2>&1); then ok $(( $2 * 1048576 ))
            else err "$m"; fi
            rm -f "$tmp/.ua.chunk" ;;
    fsync)  need 1 || continue
            if [ ! -e "$1" ]; then err ENOENT
            elif [ -d "$1" ]; then sync; ok
            elif m=$(dd if=/dev/null of="$1" conv=notrunc,fsync 2>&1); then ok
            else err "$m"; fi ;;
    sync)   need 0 && sync && ok ;;
    stat)   need 1 || continue
            if [ ! -e "$1" ]; then err ENOENT
            # A failure is an err (a just-announced disk can refuse its open for a moment).
            elif [ -b "$1" ]; then
                if m=$(blockdev --getsize64 "$1" 2>&1); then ok "$m"; else err "$m"; fi
            elif m=$(stat -L -c %s "$1" 2>&1); then ok "$m"
            else err "$m"; fi ;;
    ls)     need 1 || continue
            if [ ! -d "$1" ]; then [ -e "$1" ] && err ENOTDIR || err ENOENT
            else names=$(ls -A "$1" | tr '\n' ' '); ok ${names% }; fi ;;
    mkdir)  need 1 || continue
            if m=$(mkdir "$1" 2>&1); then ok; else err "$m"; fi ;;
    mount)  need 4 || continue
            t=; o=
            [ "$3" = - ] || t="-t $3"
            [ "$4" = - ] || o="-o $4"
            if m=$(mount $t $o "$1" "$2" 2>&1); then ok; else err "$m"; fi ;;
    umount) need 1 || continue
            if m=$(umount "$1" 2>&1); then ok; else err "$m"; fi ;;
    sysrq)  need 1 || continue
            case $1 in b|c|o) ok; echo "$1" > /proc/sysrq-trigger ;;
            ?) if m=$(echo "$1" 2>&1 > /proc/sysrq-trigger); then ok; else err "$m"; fi ;;
            *) err "EINVAL usage" ;; esac ;;
    poweroff) need 0 && { ok; sync; poweroff -f; } ;;
    reboot) need 0 && { ok; sync; reboot -f; } ;;
    panic)  ok; echo "kuml-uagent panic: $rest" > /dev/kmsg; echo c > /proc/sysrq-trigger ;;
    run)    need 1 || continue
            # a shell script (hex); reply: its exit status, then its output (stdout and
            # stderr together, hex) when there is any
            echo "$1" | xxd -r -p > "$tmp/.ua.run"
            sh "$tmp/.ua.run" </dev/null > "$tmp/.ua.out" 2>&1
            rc=$?
            h=$(xxd -p "$tmp/.ua.out" | tr -d '\n')
            rm -f "$tmp/.ua.run" "$tmp/.ua.out"
            if [ -n "$h" ]; then ok "$rc $h"; else ok "$rc"; fi ;;
    exec-init) err "ENOSYS kernel-agent-only" ;;
    *)      err "EINVAL unknown-command" ;;
    esac
done
