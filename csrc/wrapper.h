/* The only header bindgen reads: the shim's API plus PHP's version/API ids. */
#include <main/php.h>
#include <main/php_version.h>
#include <Zend/zend_modules.h>
#include "lrpm_shim.h"
