# DEPRECATED name, kept for one release: use rc_ri_r18_nyud.py (the paper's
# row "RC+RI": RI, no NFF), which this config is. Banks converted with this
# config load with rc_ri_r18_nyud.py.
_base_ = ['./rc_ri_r18_nyud.py']
