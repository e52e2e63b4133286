"""The host side: this KVM host's configuration, VM definitions on vvols, and the
libvirt hook that binds a VM's vvols at the right moments."""
