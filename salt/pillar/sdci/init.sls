# Site values for the sdci states (copy to /srv/pillar/sdci/init.sls in dom0 and uncomment what
# differs at your site; salt/sdci/defaults.yaml holds every default). Enable it with
#   sudo qubesctl top.enable sdci pillar=True
# and check the result with `sudo qubesctl pillar.items`.
sdci: {}
#  dom0_user: user
#  dom0_group: user
#  dev_vm: sd-dev
#  dev_vm_template: debian-12-xfce
#  dev_vm_label: red
#  dev_vm_root_size: 50G
#  dev_vm_private_size: 20G
#  dev_vm_autostart: true
#  dom0_packages: [make, open-vm-tools, python3-pytest, python3-pytest-cov,
#                  python3-pytest-xdist, python3-pytest-mock, python3-systemd]
#  dev_vm_packages: [git, make, podman, ca-certificates]
#  dom0_config:          # extra keys of ~/.sdci/dom0.toml (README.md, "dom0 configuration")
#    kill_grace_secs: 10
#    limits: {max_unpacked_bytes: 2147483648}
#  agent_config:         # keys of /etc/sdci/agent.toml in the dev VM (README.md, "Agent configuration")
#    context: sd-ci-runner
