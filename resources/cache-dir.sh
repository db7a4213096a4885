# Sourced by the build scripts: sets $cache to the directory that keeps built artifacts outside
# the checkout: $KUML_CACHE, else /var/cache/kuml, else (not writable) ~/.cache/kuml.
if [ -n "${KUML_CACHE:-}" ]; then
    cache=$KUML_CACHE
else
    cache=/var/cache/kuml
    { mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; } || cache=${XDG_CACHE_HOME:-$HOME/.cache}/kuml
fi
