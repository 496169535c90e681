"""Peer side of ``benchmarks/peer_lightly.py``: lightly's SimCLR, its CIFAR-10 benchmark recipe.

Runs in the peer's own virtual environment (PyTorch CPU build, torchvision,
lightly; never a dependency of simclr_tf) and uses lightly's public pieces:
``ResNetGenerator`` (CIFAR ResNet, ``--width``), ``SimCLRProjectionHead``
(h -> h -> 128), ``NTXentLoss`` and ``SimCLRTransform`` at 32 px with colour
strength 0.5 and no blur. The optimiser is the recipe's: SGD with momentum
0.9, learning rate ``0.06 x batch / 128``, weight decay 5e-4, a cosine
annealed once per epoch over ``--epochs``; temperature 0.5 unless
``--temperature`` says otherwise. The encoder's h is the ResNet's pooled
output (its final linear layer is replaced by the identity).

After each epoch in ``--eval_epochs`` the encoder (eval mode) embeds
``DATA/train`` and ``DATA/test`` without augmentation (``ToTensor`` and
lightly's ImageNet normalisation, as the recipe's test transform) into
``OUT/epoch_<e>/{train,test}_{h,y}.npy``. ``OUT/timeline.json`` records, per
such epoch, the Unix time at the epoch's end and the seconds spent embedding so
far, so that the driver can subtract them from the training wall time.
"""

import argparse
import json
import os
import time

START = time.time()  # before torch's import: start-up counts as training time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data_dir", required=True, help="ROOT with ROOT/train and ROOT/test")
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--eval_epochs", default="2,4,6,8,10")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--base_lr", type=float, default=0.06, help="x batch_size / 128")
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--color_strength", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the train step")
    p.add_argument("--num_workers", type=int, default=2, help="DataLoader processes")
    p.add_argument("--max_steps_per_epoch", type=int, default=0, help="0: the whole epoch")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from torchvision_pipeline import declare_torchvision_ops  # same folder

    declare_torchvision_ops()
    import numpy as np
    import torch
    import torchvision
    import torchvision.transforms as T
    from lightly.loss import NTXentLoss
    from lightly.models import ResNetGenerator
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from lightly.transforms.utils import IMAGENET_NORMALIZE

    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.set_num_threads(args.threads)

    resnet = ResNetGenerator("resnet-18", width=args.width)
    feature_dim = resnet.linear.in_features
    resnet.linear = torch.nn.Identity()  # forward() now ends at the pooled h
    head = SimCLRProjectionHead(feature_dim, feature_dim, 128)
    criterion = NTXentLoss(temperature=args.temperature)
    params = list(resnet.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=args.base_lr * args.batch_size / 128,
                                momentum=0.9, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)

    train_views = SimCLRTransform(input_size=32, cj_strength=args.color_strength,
                                  gaussian_blur=0.0)
    plain = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_NORMALIZE["mean"],
                                                 IMAGENET_NORMALIZE["std"])])
    train_root = os.path.join(args.data_dir, "train")
    data = torchvision.datasets.ImageFolder(train_root, transform=train_views)
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
        generator=torch.Generator().manual_seed(args.seed))

    def embed(split):
        folder = torchvision.datasets.ImageFolder(os.path.join(args.data_dir, split),
                                                  transform=plain)
        hs, ys = [], []
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(folder, batch_size=256):
                hs.append(resnet(x).flatten(1).numpy())
                ys.append(y.numpy())
        return np.concatenate(hs).astype(np.float32), np.concatenate(ys).astype(np.int32)

    eval_epochs = {int(e) for e in args.eval_epochs.split(",") if e.strip()}
    os.makedirs(args.out, exist_ok=True)
    timeline, embed_s, step = [], 0.0, 0
    for epoch in range(1, args.epochs + 1):
        resnet.train()
        head.train()
        for i, ((x1, x2), _) in enumerate(loader):
            if args.max_steps_per_epoch and i >= args.max_steps_per_epoch:
                break
            loss = criterion(head(resnet(x1).flatten(1)), head(resnet(x2).flatten(1)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
        scheduler.step()
        print(f"epoch {epoch}: step {step}, loss {float(loss):.4f}, "
              f"{time.time() - START - embed_s:.1f} s", flush=True)
        if epoch in eval_epochs:
            end = time.time()
            resnet.eval()
            folder = os.path.join(args.out, f"epoch_{epoch:02d}")
            os.makedirs(folder, exist_ok=True)
            for split in ("train", "test"):
                h, y = embed(split)
                np.save(os.path.join(folder, f"{split}_h.npy"), h)
                np.save(os.path.join(folder, f"{split}_y.npy"), y)
            timeline.append({"epoch": epoch, "step": step, "time": end,
                             "embed_s_before": embed_s})
            embed_s += time.time() - end
    with open(os.path.join(args.out, "timeline.json"), "w", encoding="utf-8") as f:
        json.dump({"start": START, "epochs": timeline, "args": vars(args),
                   "versions": {"torch": torch.__version__,
                                "torchvision": torchvision.__version__}}, f, indent=1)


if __name__ == "__main__":
    main()
