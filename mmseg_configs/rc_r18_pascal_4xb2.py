# Multi-GPU recipe of rc_r18_pascal.py (RC + RI + NFF, ResNet-18 DeepLabv3+):
# 4 GPUs x 2 images = the paper's batch of 8, same learning rate and
# iterations. BatchNorm statistics over 2 images per GPU are not those of
# the paper's batch of 8, so every BatchNorm -- the backbone's per-task
# copies and the heads' -- becomes torch's SyncBatchNorm when the run is
# distributed: mmengine's Runner converts them (sync_bn='torch') after the
# segmentor has made the per-task copies, so each task keeps its own
# SyncBatchNorm (parameters and running statistics), synchronised over the
# GPUs. Only the trained task's norms run, on every GPU alike.
#   python tools/convert_to_rc.py mmseg_configs/rc_r18_pascal.py \
#       resnet18-f37072fd.pth --out banks/pascal_r18
#   TOOL=add_task.py bash tools/dist_train.sh \
#       mmseg_configs/rc_r18_pascal_4xb2.py 4 --bank banks/pascal_r18 \
#       --task semseg
# Why sync_bn and not norm_cfg=dict(type='SyncBN'): the backbone config is
# part of a bank's identity, so a SyncBN backbone would refuse the banks of
# rc_r18_pascal.py (and its banks would be refused by it), although the tensors
# are the same. With sync_bn the backbone config is rc_r18_pascal.py's: banks
# are shared both ways, and a task trained here is evaluated with
# rc_r18_pascal.py on one GPU.
# Without a launcher (one process) nothing is converted: plain BatchNorm
# over the 2 images of the batch. (A config with norm_cfg SyncBN would run
# the same way: mmengine reverts SyncBN to BatchNorm in single-process
# runs.) SyncBatchNorm needs GPUs: torch refuses CPU tensors when it
# synchronises, so this recipe does not train on CPUs under torchrun.
_base_ = ['./rc_r18_pascal.py']
train_dataloader = dict(batch_size=2)
sync_bn = 'torch'
