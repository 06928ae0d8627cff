"""The one training engine: loop, devices, processes (DDP), checkpoints, prediction, and the distiller
(teachers + weighted loss terms) used by every stage that trains."""
