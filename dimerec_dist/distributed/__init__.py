"""The distributed machinery, knowing nothing of DimeRec's maths: process groups
(process_group.py), the item table's sharding plan and layout (sharding.py), the
collectives the trainer and the evaluation need (collectives.py), and every private
torch/TorchRec API we rely on, version-checked (private_api.py)."""
