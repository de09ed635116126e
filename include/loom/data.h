// Umbrella header: everything in loom::data.
#pragma once
