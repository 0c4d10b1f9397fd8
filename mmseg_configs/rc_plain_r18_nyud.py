# The paper's comparison row "RC": RC layers with plain modulators (no NFF)
# from the identity (Ws = W, Wt = I; no Response Initialization), ResNet-18
# DeepLabv3+, the recipe of rc_r18_nyud.py (which is RC+RI+NFF, the full
# method; rc_ri_r18_nyud.py is RC+RI). Convert the bank with this config (it
# reads convert_cfg.ri=False, i.e. --no-ri):
#   python tools/convert_to_rc.py mmseg_configs/rc_plain_r18_nyud.py \
#       resnet18-f37072fd.pth --out banks/nyud_r18_rc
# The official RCM repository's RC row starts from a ResNet-18 trained in RC
# form on ImageNet (its own download); the identity init from the ImageNet
# ResNet-18 is our stand-in for it.
_base_ = ['./rc_r18_nyud.py']
model = dict(rc_cfg=dict(nff=False))
convert_cfg = dict(ri=False)
