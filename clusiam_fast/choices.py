"""The package's choices in one torch-free table: the CLIs' --help and the registries read these names.

tests/training/test_train_faults.py checks that every registry holds exactly these keys.
"""

METHOD_NAMES = ("clusiam", "simsiam", "clubyol", "byol")  # in the registry's order
CLUSTER_METHOD_NAMES = ("clusiam", "clubyol")  # the methods that add the cluster loss
ARCH_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
CLUSTER_LOSS_IMPLS = ("auto", "fused", "reference")
MIL_MODEL_NAMES = ("maxpool", "dsmil", "abmil")
