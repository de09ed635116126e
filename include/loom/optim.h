// Umbrella header: everything in loom::optim.
#pragma once
