"""CluSiam in existing SimSiam code: add an assigner head and one loss term.

The model is facebookresearch/simsiam's ``builder.SimSiam`` (ResNet encoder whose fc is a
3-layer projector, a 2-layer bottleneck predictor); the CluSiam additions are marked
``# CluSiam``. Trains a few steps on generated images, no download:

    python examples/simsiam_swap_in.py --steps 20
"""

import argparse

import torch
import torch.nn as nn
import torchvision

import clusiam_fast


class SimSiam(nn.Module):
    def __init__(self, dim=2048, pred_dim=512, num_clusters=100):
        super().__init__()
        self.encoder = torchvision.models.resnet18(num_classes=dim, zero_init_residual=True)
        prev_dim = self.encoder.fc.weight.shape[1]
        self.encoder.fc = nn.Sequential(
            nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
            nn.Linear(prev_dim, prev_dim, bias=False), nn.BatchNorm1d(prev_dim), nn.ReLU(inplace=True),
            self.encoder.fc, nn.BatchNorm1d(dim, affine=False),
        )  # fmt: skip
        self.encoder.fc[6].bias.requires_grad = False  # hack: not use bias as it is followed by BN
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False), nn.BatchNorm1d(pred_dim), nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )  # fmt: skip
        self.assigner = nn.Sequential(  # CluSiam: the cluster assigner, fed with z (with gradient)
            nn.Linear(dim, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, num_clusters)
        )  # fmt: skip

    def forward(self, x1, x2):
        z1, z2 = self.encoder(x1), self.encoder(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        logits = self.assigner(torch.cat([z1, z2]))  # CluSiam
        return p1, p2, z1.detach(), z2.detach(), logits


def views(images):
    """Two cheap random views: flips and brightness (stand-ins for the paper's augmentation)."""
    flip = torch.rand(len(images), 1, 1, 1) < 0.5
    return [torch.where(flip, images.flip(3), images) * (0.8 + 0.4 * torch.rand(len(images), 1, 1, 1)) for _ in "12"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the cluster loss (the paper's 0.5)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = SimSiam(num_clusters=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05 * args.batch_size / 256, momentum=0.9, weight_decay=1e-4)
    criterion = nn.CosineSimilarity(dim=1)
    data = torch.rand(256, 3, 64, 64).cumsum(2) / 64  # smooth generated "patches"
    for step in range(args.steps):
        x1, x2 = views(data[torch.randint(len(data), (args.batch_size,))])
        p1, p2, z1, z2, logits = model(x1, x2)
        inv = -(criterion(p1, z2).mean() + criterion(p2, z1).mean())
        clu = clusiam_fast.cluster_loss(torch.cat([z1, z2]), logits)  # CluSiam: the fused loss
        loss = (1 - args.alpha) * inv + args.alpha * clu
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.4f} (invariance {inv.item():.4f}, cluster {clu.item():.4f})")
    return loss.item()


if __name__ == "__main__":
    main()
