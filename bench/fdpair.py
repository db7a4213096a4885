"""bench/net.sh's `fd` transport: two programs joined by a datagram socketpair, each with its
end as descriptor 3.

  fdpair.py <hub pid file> <hub log> <hub argv...> -- <argv...>

Starts the hub in the background (its pid into <hub pid file>, its output into <hub log>),
then becomes <argv...> (exec), so that this process's pid is the program's. Neither program
gets the other's end.
"""
import fcntl
import os
import socket
import subprocess
import sys

pidfile, log, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
if "--" not in rest or rest.index("--") == 0 or rest[-1] == "--":
    sys.exit("usage: fdpair.py <hub pid file> <hub log> <hub argv...> -- <argv...>")
cut = rest.index("--")
hub, prog = rest[:cut], rest[cut + 1:]

a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
# Both ends away from descriptor 3, close-on-exec, so that each child gets only its own end
# (dup2 onto 3 makes that copy inheritable).
ends = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 100) for s in (a, b)]
a.close()
b.close()

os.dup2(ends[0], 3)
with open(log, "ab") as out:
    child = subprocess.Popen(hub, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             pass_fds=(3,))
with open(pidfile, "w") as f:
    f.write(f"{child.pid}\n")
os.dup2(ends[1], 3)
for fd in ends:
    os.close(fd)
os.execvp(prog[0], prog)
