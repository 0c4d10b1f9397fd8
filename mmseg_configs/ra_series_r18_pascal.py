# The paper's residual-adapter baseline (series adapters), ResNet-18
# DeepLabv3+, the recipe of rc_r18_pascal.py: every 3x3/7x7 conv of the
# backbone stays frozen and gets a zero-initialised per-task adapter where
# RC puts a modulator (rc_adapter/core/layers/residual_adapter.py):
# series: y = Ws x + A_t(BN_t(Ws x)), A_t a 1x1 conv c_out -> c_out.
# The 1x1 downsample convs and every BatchNorm are per task, as in RC. The
# adapters start at zero, so a new task starts from the pretrained network:
# convert the bank without RI (this config's convert_cfg.ri=False, i.e.
# --no-ri):
#   python tools/convert_to_rc.py mmseg_configs/ra_series_r18_pascal.py \
#       resnet18-f37072fd.pth --out banks/pascal_r18_ra_series
_base_ = ['./rc_r18_pascal.py']
# NFF and the modulator family belong to RC layers: unused here.
model = dict(rc_cfg=dict(method='ra_series', nff=False))
convert_cfg = dict(ri=False)
