# dom0 for a golden snapshot: packages and VMware Tools, the sdci files, and the dev VM.
# Apply with: sudo qubesctl --show-output state.sls sdci.dom0
include:
  - sdci.dom0.packages
  - sdci.dom0.files
  - sdci.dom0.dev-vm
