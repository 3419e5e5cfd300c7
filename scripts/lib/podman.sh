# Sourced (POSIX sh): podman, hermetic, inside a sandbox that plays one VM. Used by
# scripts/bench-cni and the tests (tests/cni_podman.rs). Nothing here may run in the
# machine's own namespaces: podman_vm_mounts refuses to.
#
#   podman_vm_mounts          # in the VM's own mount namespace: tmpfs /run and /var/lib, cgroup2
#   podman_setup DIR CNET     # config for podman under DIR (on that tmpfs), cnet as a CNI plugin
#   podman_env DIR            # the same environment again, in another shell of that VM
#   pm ARGS...                # podman with the CNI backend and its state under DIR
#   pm_netavark ARGS...       # the same with podman's default backend, netavark
#   import_busybox            # localhost/busybox:cnet from Debian's busybox-static
#   write_conflist NAME JSON  # DIR/net.d/NAME.conflist holding one plugin, JSON
IMAGE=localhost/busybox:cnet

# A fresh /run (podman's /run/libpod, /run/containers, crun's /run/crun, /run/netns, cnet's
# /run/cnet) and /var/lib (libcni's /var/lib/cni, podman's storage), and a pure cgroup2 tree
# (podman's probing wants one; containers run with cgroups disabled). Only in a mount
# namespace that is not the machine's, and a network namespace that is not either.
podman_vm_mounts() {
  [ "$(readlink /proc/self/ns/mnt)" != "$(readlink /proc/1/ns/mnt)" ] || [ "$$" = 1 ] || {
    echo "podman_vm_mounts: not in a mount namespace of its own" >&2; return 1; }
  [ -n "${CNET_HOST_NETNS:-}" ] && [ "$(readlink /proc/self/ns/net)" = "$CNET_HOST_NETNS" ] && {
    echo "podman_vm_mounts: in the machine's own network namespace" >&2; return 1; }
  mount -t tmpfs cnet-vm-run /run
  mkdir -p /run/netns /run/cnet /run/lock
  mount -t tmpfs cnet-vm-varlib /var/lib
  mkdir -p /var/lib/containers /var/lib/cni
  umount -R /sys/fs/cgroup 2>/dev/null || true
  mount -t cgroup2 none /sys/fs/cgroup
}

podman_env() {
  PDIR=$1
  export CONTAINERS_CONF="$PDIR/containers-cni.conf"
  export CONTAINERS_STORAGE_CONF="$PDIR/storage.conf"
  export TMPDIR="$PDIR/tmp"
  unset XDG_RUNTIME_DIR XDG_CONFIG_HOME
}

podman_setup() {
  d=$1; cnet_bin=$2
  mkdir -p "$d/net.d" "$d/netavark.d" "$d/tmp" "$d/storage" "$d/runroot" "$d/libpod-tmp" "$d/bin"
  # cnet as the runtime runs a plugin: /opt/cni/bin/<type>, here DIR/bin/cnet.
  cp "$cnet_bin" "$d/bin/cnet"
  cat > "$d/containers-cni.conf" <<CONF
[containers]
# = --cgroups=disabled: no cgroup controllers are delegated to a sandbox
cgroups = "disabled"
# = --ulimit ...: without CAP_SYS_RESOURCE podman cannot raise them to the hard maximum
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$d/libpod-tmp"
[network]
network_backend = "cni"
cni_plugin_dirs = ["$d/bin", "/usr/lib/cni"]
network_config_dir = "$d/net.d"
CONF
  sed -e 's/^network_backend = "cni"/network_backend = "netavark"/' \
      -e "s|^network_config_dir = .*|network_config_dir = \"$d/netavark.d\"|" \
      "$d/containers-cni.conf" > "$d/containers-netavark.conf"
  cat > "$d/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "$d/storage"
runroot = "$d/runroot"
CONF
  podman_env "$d"
}

pm() { podman --root "$PDIR/storage" --runroot "$PDIR/runroot" "$@"; }
pm_netavark() { CONTAINERS_CONF="$PDIR/containers-netavark.conf" pm "$@"; }

# busybox-static -> a root filesystem -> podman import: an image with no registry.
import_busybox() {
  r="$PDIR/rootfs"
  rm -rf "$r"; mkdir -p "$r/bin" "$r/etc" "$r/proc" "$r/sys" "$r/dev" "$r/tmp" "$r/root"
  cp /bin/busybox "$r/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
  ln -s bin "$r/sbin"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
  echo 'root:x:0:' > "$r/etc/group"
  tar -C "$r" -c . | pm import --change 'CMD ["/bin/sh"]' - "$IMAGE" > "$PDIR/import.log" 2>&1 \
    || { cat "$PDIR/import.log" >&2; return 1; }
  rm -rf "$r"
}

write_conflist() {
  printf '{"cniVersion": "%s", "name": "%s", "plugins": [%s]}\n' "${3:-1.0.0}" "$1" "$2" > "$PDIR/net.d/$1.conflist"
}
