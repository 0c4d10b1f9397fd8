# The paper's residual-adapter baseline (parallel adapters), ResNet-18
# DeepLabv3+, the recipe of rc_r18_nyud.py: every 3x3/7x7 conv of the
# backbone stays frozen and gets a zero-initialised per-task adapter where
# RC puts a modulator (rc_adapter/core/layers/residual_adapter.py):
# parallel: y = Ws x + A_t x, A_t a 1x1 conv c_in -> c_out with the
# conv's stride.
# The 1x1 downsample convs and every BatchNorm are per task, as in RC. The
# adapters start at zero, so a new task starts from the pretrained network:
# convert the bank without RI (this config's convert_cfg.ri=False, i.e.
# --no-ri):
#   python tools/convert_to_rc.py mmseg_configs/ra_parallel_r18_nyud.py \
#       resnet18-f37072fd.pth --out banks/nyud_r18_ra_parallel
_base_ = ['./rc_r18_nyud.py']
# NFF and the modulator family belong to RC layers: unused here.
model = dict(rc_cfg=dict(method='ra_parallel', nff=False))
convert_cfg = dict(ri=False)
