import torch

WIDTH = 4
