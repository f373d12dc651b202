# Sourced by scripts/test.sh: the browser test (tests/test_serve_browser.py) drives Debian's
# chromium through Playwright. When it is missing and this shell may install system packages
# (root, or password-less sudo, with apt-get), install it (about 20 s, 330 MB); otherwise say
# how, and the test skips (under CI=true it fails instead).
#
#   GROUNDED_SEG_CHROMIUM      a chromium to use instead
#   GROUNDED_SEG_NO_BROWSER=1  do not install it
if [ -z "${GROUNDED_SEG_NO_BROWSER:-}" ] && [ -z "${GROUNDED_SEG_CHROMIUM:-}" ] \
        && ! command -v chromium >/dev/null 2>&1; then
    as_root=()
    if [ "$(id -u)" != 0 ]; then
        if sudo -n true 2>/dev/null; then as_root=(sudo -n); else as_root=(none); fi
    fi
    if [ "${as_root[0]:-}" != none ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium for the browser test (once)" >&2
        export DEBIAN_FRONTEND=noninteractive
        "${as_root[@]}" apt-get install -y -q chromium >/dev/null 2>&1 \
            || { "${as_root[@]}" apt-get update -q >/dev/null 2>&1 \
                 && "${as_root[@]}" apt-get install -y -q chromium >/dev/null 2>&1; } \
            || echo "could not install chromium: the browser test will say so" >&2
    else
        echo "no chromium and no way to install it: apt-get install chromium (the browser test skips)" >&2
    fi
fi
