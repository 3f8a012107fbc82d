#!/bin/sh
# `make install`: lays a unit (or the relay's host) out as the systemd units expect it.
#
#   $PREFIX                 (/opt/defect-edge)   .venv/, README.md, the demo models, examples/, and share/mosquitto/
#                                                 (the central broker's configuration, ACL and credentials script)
#   $SYSCONFDIR/defect-edge (/etc/defect-edge)   edge.toml and relay.toml from the examples, and empty credential files
#                                                 for LoadCredential=; existing files are never overwritten
#   $UNITDIR                (/usr/local/lib/systemd/system)  the three units, pointing at $PREFIX and $SYSCONFDIR
#   $SYSUSERSDIR            (/usr/local/lib/sysusers.d)      the defect-edge and defect-relay system users
#
# EXTRAS=gradcam adds TensorFlow for heatmaps on the unit (about 500 MB); EXTRAS=relay the relay's templates and
# channels (Jinja2, Apprise) on the central host; EXTRAS=console the console. PIP_ARGS passes options to pip (e.g.
# --no-index --find-links DIR on a plant network). SYSTEM_SITE_PACKAGES=auto (default) gives the venv the system's
# packages when the system has what pip cannot provide:
#   - Debian's python3-picamera2 (a Raspberry Pi). A system NumPy 1.x is then kept at 1.x: picamera2's simplejpeg is
#     compiled against it and fails with "numpy.dtype size changed" under NumPy 2.
#   - an OpenCV built with GStreamer (JetPack's, for CSI cameras through nvarguscamerasrc). pip's
#     opencv-python-headless, built without GStreamer, is then removed from the venv so the system's is imported.
#
# With DESTDIR (a package build, or the test) everything lands under DESTDIR, the venv is relocated to PREFIX (the
# #! lines of its scripts and the paths in its byte code), and this machine is left alone: no users, no daemon-reload.
# Without DESTDIR and as root, the users are created and systemd reloaded. Running it again upgrades in place.
set -eu

PYTHON=${PYTHON:-python3}
PREFIX=${PREFIX:-/opt/defect-edge}
SYSCONFDIR=${SYSCONFDIR:-/etc}
UNITDIR=${UNITDIR:-/usr/local/lib/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-/usr/local/lib/sysusers.d}
DESTDIR=${DESTDIR:-}
EXTRAS=${EXTRAS:-}
SYSTEM_SITE_PACKAGES=${SYSTEM_SITE_PACKAGES:-auto}
PIP_ARGS=${PIP_ARGS:-}

src=$(cd "$(dirname "$0")/.." && pwd)
root="$DESTDIR$PREFIX"
etc="$DESTDIR$SYSCONFDIR/defect-edge"
venv="$root/.venv"
say() { printf 'install: %s\n' "$*"; }

case "$PREFIX" in /*) ;; *) echo "install: PREFIX must be an absolute path, not '$PREFIX'" >&2; exit 2 ;; esac
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || {
  echo "install: $PYTHON is missing or older than 3.10 (JetPack 5 has 3.8: use JetPack 6)" >&2; exit 2; }

system_has() { "$PYTHON" -c "$1" >/dev/null 2>&1; }
has_picamera2='import importlib.util, sys; sys.exit(importlib.util.find_spec("picamera2") is None)'
has_gstreamer_opencv='import re, sys, cv2; sys.exit(not re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()))'
if [ "$SYSTEM_SITE_PACKAGES" = auto ]; then
  if system_has "$has_picamera2" || system_has "$has_gstreamer_opencv"
  then SYSTEM_SITE_PACKAGES=yes; else SYSTEM_SITE_PACKAGES=no; fi
fi

# --- the venv -------------------------------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
constraints="$work/constraints.txt"
if [ "$SYSTEM_SITE_PACKAGES" = yes ]; then
  system_numpy=$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
  grep -v -i -E '^(numpy|opencv-python-headless)==' "$src/constraints.txt" > "$constraints"
  case "$system_numpy" in
    1.*) echo "numpy<2" >> "$constraints"
         say "venv with the system's site packages; the system's NumPy is $system_numpy, so NumPy stays 1.x" ;;
    *)   say "venv with the system's site packages" ;;
  esac
  "$PYTHON" -m venv --system-site-packages "$venv"
else
  cp "$src/constraints.txt" "$constraints"
  "$PYTHON" -m venv "$venv"
fi
say "installing defect-inspection${EXTRAS:+[$EXTRAS]} into $PREFIX/.venv"
pip() { "$venv/bin/python" -m pip --quiet --disable-pip-version-check "$@"; }
# shellcheck disable=SC2086  # PIP_ARGS is a list of options
pip wheel $PIP_ARGS --no-deps --wheel-dir "$work" "$src"
wheel=$(ls "$work"/defect_inspection-*.whl)
# shellcheck disable=SC2086
pip install $PIP_ARGS --no-compile -c "$constraints" "$wheel${EXTRAS:+[$EXTRAS]}"
# Reinstalled every time, so a second `make install` of the same version still updates the code.
# shellcheck disable=SC2086
pip install $PIP_ARGS --no-compile --no-deps --force-reinstall "$wheel"

if [ "$SYSTEM_SITE_PACKAGES" = yes ] && system_has "$has_gstreamer_opencv"; then
  say "using the system's OpenCV (built with GStreamer) instead of pip's opencv-python-headless"
  pip uninstall --yes opencv-python-headless
fi

if [ -n "$DESTDIR" ]; then
  # Relocate: the venv will run from $PREFIX, not from where it was built.
  for f in "$venv"/bin/* "$venv/pyvenv.cfg"; do
    if [ -f "$f" ] && [ ! -L "$f" ] && grep -Iq "$venv" "$f" 2>/dev/null; then
      sed -i "s|$venv|$PREFIX/.venv|g" "$f"
    fi
  done
fi
# Byte code compiled now, with the paths it will run from: under ProtectSystem=strict nothing can write it later.
"$venv/bin/python" -m compileall -q -j 0 ${DESTDIR:+-s "$DESTDIR"} "$venv/lib" >/dev/null

# --- files ----------------------------------------------------------------------------------------------------------
install -d -m 0755 "$root/models" "$root/examples" "$root/share/mosquitto"
install -m 0644 "$src/README.md" "$root/README.md"
# NAME.signature.npz: what each model has seen (docs/framing.md); a manifest that names it is refused without it.
for f in "$src"/models/*.tflite "$src"/models/*.json "$src"/models/*.h5 "$src"/models/*.md "$src"/models/*.npz; do
  [ -e "$f" ] || continue  # a pattern that matched nothing
  install -m 0644 "$f" "$root/models/"
done
# Each model's verification set (NAME.verify/ beside NAME.verify.json): the unit re-proves parity with it.
for d in "$src"/models/*.verify; do
  [ -d "$d" ] || continue
  install -d -m 0755 "$root/models/${d##*/}"
  install -m 0644 "$d"/* "$root/models/${d##*/}/"
done
install -m 0644 "$src/examples/edge.toml" "$src/examples/relay.toml" "$src/examples/console.toml" "$root/examples/"
install -m 0644 "$src/systemd/mosquitto/defect-edge.conf" "$src/systemd/mosquitto/acl" "$root/share/mosquitto/"
install -m 0755 "$src/systemd/mosquitto/make-credentials.sh" "$root/share/mosquitto/"

install -d -m 0755 "$etc"
for f in edge.toml relay.toml console.toml; do
  if [ -e "$etc/$f" ]; then say "kept $SYSCONFDIR/defect-edge/$f (the new example is $PREFIX/examples/$f)"
  else install -m 0644 "$src/examples/$f" "$etc/$f"; fi
done
# LoadCredential= refuses to start a unit whose file is missing; an empty one means "no password".
for f in mqtt_password relay.mqtt_password relay.smtp_password console.mqtt_password console.db_password; do
  [ -e "$etc/$f" ] || install -m 0600 /dev/null "$etc/$f"
done

install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$SYSUSERSDIR"
for unit in defect-edge.service defect-edge@.service defect-relay.service defect-console.service; do
  sed -e "s|/opt/defect-edge|$PREFIX|g" -e "s|/etc/defect-edge|$SYSCONFDIR/defect-edge|g" \
    "$src/systemd/$unit" > "$DESTDIR$UNITDIR/$unit"
  chmod 0644 "$DESTDIR$UNITDIR/$unit"
done
cat > "$DESTDIR$SYSUSERSDIR/defect-edge.conf" <<'EOF'
# The inspection unit's and the relay's system users (systemd-sysusers); their units name them in User=.
u defect-edge - "Defect inspection unit" /var/lib/defect-edge
u defect-relay - "Defect inspection alert relay" /var/lib/defect-relay
u defect-console - "Defect inspection line console" /var/lib/defect-console
EOF
chmod 0644 "$DESTDIR$SYSUSERSDIR/defect-edge.conf"

# --- this machine ---------------------------------------------------------------------------------------------------
if [ -z "$DESTDIR" ] && [ "$(id -u)" = 0 ]; then
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$SYSUSERSDIR/defect-edge.conf"
  else
    for u in defect-edge defect-relay defect-console; do
      id "$u" >/dev/null 2>&1 || useradd --system --user-group --home-dir "/var/lib/$u" --shell /usr/sbin/nologin "$u"
    done
  fi
  [ ! -d /run/systemd/system ] || systemctl daemon-reload
fi

say "done: $root"
cat <<EOF
Next, on a unit:
  $PREFIX/.venv/bin/defect-edge models add DIR/NAME --models-dir /var/lib/defect-edge/models
                                                # every file of the converted model, proven on this unit first
  edit $SYSCONFDIR/defect-edge/edge.toml; put the broker password in $SYSCONFDIR/defect-edge/mqtt_password
  $PREFIX/.venv/bin/defect-edge check-config --config $SYSCONFDIR/defect-edge/edge.toml
  systemctl enable --now defect-edge            # or defect-edge@NAME for $SYSCONFDIR/defect-edge/NAME.toml
Beside the central broker (installed with EXTRAS=relay,console): $PREFIX/share/mosquitto/, then
  $PREFIX/.venv/bin/defect-console --config $SYSCONFDIR/defect-edge/console.toml user add NAME --role admin
  systemctl enable --now defect-relay defect-console
EOF
