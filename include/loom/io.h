// Umbrella header: everything in loom::io.
#pragma once
