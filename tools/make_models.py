"""Write the model library's prototxts (models/*/train_val.prototxt, deploy.prototxt).

    python tools/make_models.py

Layer and blob names follow the published Caffe releases of each model, so
their .caffemodel weights load by name.  The files are committed; this script
is how they were made and how to remake them after a change here.
"""
import os
import sys

from google.protobuf import json_format, text_format

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from caffeine.proto import caffe_pb2  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN, TEST = 'TRAIN', 'TEST'


class Net:
    def __init__(self, name):
        self.name = name
        self.layers = []

    def add(self, name, type, bottom=(), top=None, **kw):
        d = {'name': name, 'type': type}
        if isinstance(bottom, str):
            bottom = [bottom]
        if bottom:
            d['bottom'] = list(bottom)
        if top is None:
            top = [name]
        elif isinstance(top, str):
            top = [top]
        if top:
            d['top'] = list(top)
        d.update(kw)
        self.layers.append(d)
        return top[0] if top else None

    def text(self):
        p = json_format.ParseDict({'name': self.name, 'layer': self.layers}, caffe_pb2.NetParameter())
        return text_format.MessageToString(p)


LR = [{'lr_mult': 1, 'decay_mult': 1}, {'lr_mult': 2, 'decay_mult': 0}]


def conv(net, name, bottom, n, k, s=1, p=0, group=1, wf=None, bf=None, bias=True, top=None, lr=True):
    cp = {'num_output': n, 'kernel_size': [k]}
    if s != 1:
        cp['stride'] = [s]
    if p:
        cp['pad'] = [p]
    if group != 1:
        cp['group'] = group
    if not bias:
        cp['bias_term'] = False
    if wf:
        cp['weight_filler'] = wf
    if bf and bias:
        cp['bias_filler'] = bf
    kw = {'convolution_param': cp}
    if lr:
        kw['param'] = LR if bias else LR[:1]
    return net.add(name, 'Convolution', bottom, top, **kw)


def ip(net, name, bottom, n, wf=None, bf=None, lr=True, param=None):
    ipp = {'num_output': n}
    if wf:
        ipp['weight_filler'] = wf
    if bf:
        ipp['bias_filler'] = bf
    kw = {'inner_product_param': ipp}
    if param is not None:
        kw['param'] = param
    elif lr:
        kw['param'] = LR
    return net.add(name, 'InnerProduct', bottom, None, **kw)


def relu(net, name, blob):
    net.add(name, 'ReLU', blob, blob)
    return blob


def pool(net, name, bottom, method, k=None, s=1, p=0, global_=False):
    pp = {'pool': method}
    if global_:
        pp['global_pooling'] = True
    else:
        pp['kernel_size'] = k
        if s != 1:
            pp['stride'] = s
        if p:
            pp['pad'] = p
    return net.add(name, 'Pooling', bottom, None, pooling_param=pp)


def lrn(net, name, bottom, size=5, alpha=1e-4, beta=0.75, within=False):
    lp = {'local_size': size, 'alpha': alpha, 'beta': beta}
    if within:
        lp['norm_region'] = 'WITHIN_CHANNEL'
    return net.add(name, 'LRN', bottom, None, lrn_param=lp)


def data_layers(net, train_src, test_src, train_batch, test_batch, transform_train, transform_test):
    for phase, src, batch, tr in ((TRAIN, train_src, train_batch, transform_train),
                                  (TEST, test_src, test_batch, transform_test)):
        kw = {'include': [{'phase': phase}],
              'data_param': {'source': src, 'batch_size': batch, 'backend': 'LMDB'}}
        if tr:
            kw['transform_param'] = tr
        net.add(('data'), 'Data', (), ['data', 'label'], **kw)


def input_layer(net, shape):
    net.add('data', 'Input', (), ['data'], input_param={'shape': [{'dim': shape}]})


def heads(net, bottom, deploy, top5=False, loss_name='loss', acc_name='accuracy'):
    if deploy:
        net.add('prob', 'Softmax', bottom)
        return
    net.add(acc_name, 'Accuracy', [bottom, 'label'], include=[{'phase': TEST}])
    if top5:
        net.add(acc_name + '_top5', 'Accuracy', [bottom, 'label'], include=[{'phase': TEST}],
                accuracy_param={'top_k': 5})
    net.add(loss_name, 'SoftmaxWithLoss', [bottom, 'label'])


XAVIER = {'type': 'xavier'}
CONST0 = {'type': 'constant'}


def gauss(std):
    return {'type': 'gaussian', 'std': std}


def const(v):
    return {'type': 'constant', 'value': v}


# -- LeNet -------------------------------------------------------------------------
def lenet(deploy):
    net = Net('LeNet')
    if deploy:
        input_layer(net, [64, 1, 28, 28])
    else:
        data_layers(net, 'data/mnist/mnist_train_lmdb', 'data/mnist/mnist_test_lmdb', 64, 100,
                    {'scale': 0.00390625}, {'scale': 0.00390625})
    x = conv(net, 'conv1', 'data', 20, 5, wf=XAVIER, bf=CONST0)
    x = pool(net, 'pool1', x, 'MAX', 2, 2)
    x = conv(net, 'conv2', x, 50, 5, wf=XAVIER, bf=CONST0)
    x = pool(net, 'pool2', x, 'MAX', 2, 2)
    x = ip(net, 'ip1', x, 500, XAVIER, CONST0)
    relu(net, 'relu1', x)
    x = ip(net, 'ip2', x, 10, XAVIER, CONST0)
    heads(net, x, deploy)
    return net


# -- CIFAR-10 ----------------------------------------------------------------------
def cifar10(deploy, full):
    net = Net('CIFAR10_full' if full else 'CIFAR10_quick')
    mean = {'mean_file': 'data/cifar10/mean.binaryproto'}
    if deploy:
        input_layer(net, [1, 3, 32, 32])
    else:
        data_layers(net, 'data/cifar10/cifar10_train_lmdb', 'data/cifar10/cifar10_test_lmdb', 100, 100, mean, mean)
    x = conv(net, 'conv1', 'data', 32, 5, p=2, wf=gauss(0.0001), bf=CONST0)
    x = pool(net, 'pool1', x, 'MAX', 3, 2)
    relu(net, 'relu1', x)
    if full:
        x = lrn(net, 'norm1', x, 3, 5e-5, 0.75, within=True)
    x = conv(net, 'conv2', x, 32, 5, p=2, wf=gauss(0.01), bf=CONST0)
    relu(net, 'relu2', x)
    x = pool(net, 'pool2', x, 'AVE', 3, 2)
    if full:
        x = lrn(net, 'norm2', x, 3, 5e-5, 0.75, within=True)
    x = conv(net, 'conv3', x, 64, 5, p=2, wf=gauss(0.01), bf=CONST0)
    relu(net, 'relu3', x)
    x = pool(net, 'pool3', x, 'AVE', 3, 2)
    if full:
        x = ip(net, 'ip1', x, 10, gauss(0.01), CONST0,
               param=[{'lr_mult': 1, 'decay_mult': 250}, {'lr_mult': 2, 'decay_mult': 0}])
    else:
        x = ip(net, 'ip1', x, 64, gauss(0.1), CONST0)
        x = ip(net, 'ip2', x, 10, gauss(0.1), CONST0)
    heads(net, x, deploy)
    return net


# -- ImageNet models ---------------------------------------------------------------
IMAGENET_MEAN = {'mean_file': 'data/ilsvrc12/imagenet_mean.binaryproto'}


def imagenet_data(net, deploy, crop, batch_train, batch_test, batch_deploy=10, mean=None):
    if deploy:
        input_layer(net, [batch_deploy, 3, crop, crop])
        return
    m = dict(mean or IMAGENET_MEAN)
    data_layers(net, 'data/ilsvrc12/ilsvrc12_train_lmdb', 'data/ilsvrc12/ilsvrc12_val_lmdb', batch_train, batch_test,
                dict(m, mirror=True, crop_size=crop), dict(m, mirror=False, crop_size=crop))


def caffenet(deploy, alexnet=False):
    net = Net('AlexNet' if alexnet else 'CaffeNet')
    imagenet_data(net, deploy, 227, 256, 50)
    b1 = 0.1 if alexnet else 1
    x = conv(net, 'conv1', 'data', 96, 11, s=4, wf=gauss(0.01), bf=CONST0)
    relu(net, 'relu1', x)
    if alexnet:
        x = lrn(net, 'norm1', x)
        x = pool(net, 'pool1', x, 'MAX', 3, 2)
    else:
        x = pool(net, 'pool1', x, 'MAX', 3, 2)
        x = lrn(net, 'norm1', x)
    x = conv(net, 'conv2', x, 256, 5, p=2, group=2, wf=gauss(0.01), bf=const(b1))
    relu(net, 'relu2', x)
    if alexnet:
        x = lrn(net, 'norm2', x)
        x = pool(net, 'pool2', x, 'MAX', 3, 2)
    else:
        x = pool(net, 'pool2', x, 'MAX', 3, 2)
        x = lrn(net, 'norm2', x)
    x = conv(net, 'conv3', x, 384, 3, p=1, wf=gauss(0.01), bf=CONST0)
    relu(net, 'relu3', x)
    x = conv(net, 'conv4', x, 384, 3, p=1, group=2, wf=gauss(0.01), bf=const(b1))
    relu(net, 'relu4', x)
    x = conv(net, 'conv5', x, 256, 3, p=1, group=2, wf=gauss(0.01), bf=const(b1))
    relu(net, 'relu5', x)
    x = pool(net, 'pool5', x, 'MAX', 3, 2)
    for i in (6, 7):
        x = ip(net, 'fc%d' % i, x, 4096, gauss(0.005), const(b1))
        relu(net, 'relu%d' % i, x)
        net.add('drop%d' % i, 'Dropout', x, x, dropout_param={'dropout_ratio': 0.5})
    x = ip(net, 'fc8', x, 1000, gauss(0.01), CONST0)
    heads(net, x, deploy)
    return net


def vgg16(deploy):
    net = Net('VGG_ILSVRC_16_layers')
    imagenet_data(net, deploy, 224, 32, 50, mean={'mean_value': [103.939, 116.779, 123.68]})
    x = 'data'
    for stage, (n, reps) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1):
        for r in range(1, reps + 1):
            x = conv(net, 'conv%d_%d' % (stage, r), x, n, 3, p=1, wf=gauss(0.01), bf=CONST0)
            relu(net, 'relu%d_%d' % (stage, r), x)
        x = pool(net, 'pool%d' % stage, x, 'MAX', 2, 2)
    for i in (6, 7):
        x = ip(net, 'fc%d' % i, x, 4096, gauss(0.005), const(0.1))
        relu(net, 'relu%d' % i, x)
        net.add('drop%d' % i, 'Dropout', x, x, dropout_param={'dropout_ratio': 0.5})
    x = ip(net, 'fc8', x, 1000, gauss(0.01), CONST0)
    heads(net, x, deploy, top5=True)
    return net


def googlenet(deploy):
    net = Net('GoogleNet')
    imagenet_data(net, deploy, 224, 32, 50, mean={'mean_value': [104, 117, 123]})
    wf, bf = XAVIER, const(0.2)

    def c(name, bottom, n, k, s=1, p=0, relu_name=None):
        t = conv(net, name, bottom, n, k, s, p, wf=wf, bf=bf)
        relu(net, relu_name, t)
        return t

    x = c('conv1/7x7_s2', 'data', 64, 7, 2, 3, 'conv1/relu_7x7')
    x = pool(net, 'pool1/3x3_s2', x, 'MAX', 3, 2)
    x = lrn(net, 'pool1/norm1', x)
    x = c('conv2/3x3_reduce', x, 64, 1, relu_name='conv2/relu_3x3_reduce')
    x = c('conv2/3x3', x, 192, 3, p=1, relu_name='conv2/relu_3x3')
    x = lrn(net, 'conv2/norm2', x)
    x = pool(net, 'pool2/3x3_s2', x, 'MAX', 3, 2)

    def inception(name, x, n1, n3r, n3, n5r, n5, npp):
        p = 'inception_%s/' % name
        a = c(p + '1x1', x, n1, 1, relu_name=p + 'relu_1x1')
        b = c(p + '3x3_reduce', x, n3r, 1, relu_name=p + 'relu_3x3_reduce')
        b = c(p + '3x3', b, n3, 3, p=1, relu_name=p + 'relu_3x3')
        d = c(p + '5x5_reduce', x, n5r, 1, relu_name=p + 'relu_5x5_reduce')
        d = c(p + '5x5', d, n5, 5, p=2, relu_name=p + 'relu_5x5')
        e = pool(net, p + 'pool', x, 'MAX', 3, 1, 1)
        e = c(p + 'pool_proj', e, npp, 1, relu_name=p + 'relu_pool_proj')
        return net.add(p + 'output', 'Concat', [a, b, d, e])

    def aux(n, x):
        p = 'loss%d/' % n
        y = pool(net, p + 'ave_pool', x, 'AVE', 5, 3)
        y = c(p + 'conv', y, 128, 1, relu_name=p + 'relu_conv')
        y = ip(net, p + 'fc', y, 1024, wf, bf)
        relu(net, p + 'relu_fc', y)
        net.add(p + 'drop_fc', 'Dropout', y, y, dropout_param={'dropout_ratio': 0.7})
        y = ip(net, p + 'classifier', y, 1000, wf, CONST0)
        net.add(p + 'loss', 'SoftmaxWithLoss', [y, 'label'], loss_weight=[0.3])
        net.add(p + 'top-1', 'Accuracy', [y, 'label'], include=[{'phase': TEST}])
        net.add(p + 'top-5', 'Accuracy', [y, 'label'], include=[{'phase': TEST}], accuracy_param={'top_k': 5})

    x = inception('3a', x, 64, 96, 128, 16, 32, 32)
    x = inception('3b', x, 128, 128, 192, 32, 96, 64)
    x = pool(net, 'pool3/3x3_s2', x, 'MAX', 3, 2)
    x = inception('4a', x, 192, 96, 208, 16, 48, 64)
    if not deploy:
        aux(1, x)
    x = inception('4b', x, 160, 112, 224, 24, 64, 64)
    x = inception('4c', x, 128, 128, 256, 24, 64, 64)
    x = inception('4d', x, 112, 144, 288, 32, 64, 64)
    if not deploy:
        aux(2, x)
    x = inception('4e', x, 256, 160, 320, 32, 128, 128)
    x = pool(net, 'pool4/3x3_s2', x, 'MAX', 3, 2)
    x = inception('5a', x, 256, 160, 320, 32, 128, 128)
    x = inception('5b', x, 384, 192, 384, 48, 128, 128)
    x = pool(net, 'pool5/7x7_s1', x, 'AVE', 7, 1)
    net.add('pool5/drop_7x7_s1', 'Dropout', x, x, dropout_param={'dropout_ratio': 0.4})
    x = ip(net, 'loss3/classifier', x, 1000, wf, CONST0)
    if deploy:
        net.add('prob', 'Softmax', x)
    else:
        net.add('loss3/loss3', 'SoftmaxWithLoss', [x, 'label'], loss_weight=[1])
        net.add('loss3/top-1', 'Accuracy', [x, 'label'], include=[{'phase': TEST}])
        net.add('loss3/top-5', 'Accuracy', [x, 'label'], include=[{'phase': TEST}], accuracy_param={'top_k': 5})
    return net


def resnet50(deploy):
    net = Net('ResNet-50')
    imagenet_data(net, deploy, 224, 32, 50, batch_deploy=1, mean={'mean_value': [104, 117, 123]})

    def cbn(conv_name, bn_suffix, bottom, n, k, s=1, p=0, relu_name=None):
        t = conv(net, conv_name, bottom, n, k, s, p, wf={'type': 'msra'}, bias=False, lr=False)
        bn = {} if not deploy else {'batch_norm_param': {'use_global_stats': True}}
        net.add('bn' + bn_suffix, 'BatchNorm', t, t, **bn)
        net.add('scale' + bn_suffix, 'Scale', t, t, scale_param={'bias_term': True})
        if relu_name:
            relu(net, relu_name, t)
        return t

    x = cbn('conv1', '_conv1', 'data', 64, 7, 2, 3, 'conv1_relu')
    x = pool(net, 'pool1', x, 'MAX', 3, 2)
    for stage, (width, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], 2):
        for bi in range(blocks):
            b = 'abcdef'[bi]
            name = '%d%s' % (stage, b)
            stride = 2 if (bi == 0 and stage > 2) else 1
            if bi == 0:
                short = cbn('res%s_branch1' % name, '%s_branch1' % name, x, width * 4, 1, stride)
            else:
                short = x
            y = cbn('res%s_branch2a' % name, '%s_branch2a' % name, x, width, 1, stride,
                    relu_name='res%s_branch2a_relu' % name)
            y = cbn('res%s_branch2b' % name, '%s_branch2b' % name, y, width, 3, 1, 1,
                    relu_name='res%s_branch2b_relu' % name)
            y = cbn('res%s_branch2c' % name, '%s_branch2c' % name, y, width * 4, 1)
            x = net.add('res%s' % name, 'Eltwise', [short, y])
            relu(net, 'res%s_relu' % name, x)
    x = pool(net, 'pool5', x, 'AVE', 7, 1)
    x = ip(net, 'fc1000', x, 1000, {'type': 'msra'}, CONST0)
    heads(net, x, deploy, top5=True)
    return net


def squeezenet11(deploy):
    net = Net('SqueezeNet_v1.1')
    imagenet_data(net, deploy, 227, 32, 25, mean={'mean_value': [104, 117, 123]})
    wf = XAVIER

    def c(name, bottom, n, k, s=1, p=0, relu_name=None):
        t = conv(net, name, bottom, n, k, s, p, wf=wf, lr=False)
        relu(net, relu_name, t)
        return t

    def fire(i, x, s, e):
        p = 'fire%d/' % i
        sq = c(p + 'squeeze1x1', x, s, 1, relu_name=p + 'relu_squeeze1x1')
        a = c(p + 'expand1x1', sq, e, 1, relu_name=p + 'relu_expand1x1')
        b = c(p + 'expand3x3', sq, e, 3, p=1, relu_name=p + 'relu_expand3x3')
        return net.add(p + 'concat', 'Concat', [a, b])

    x = c('conv1', 'data', 64, 3, 2, relu_name='relu_conv1')
    x = pool(net, 'pool1', x, 'MAX', 3, 2)
    x = fire(2, x, 16, 64)
    x = fire(3, x, 16, 64)
    x = pool(net, 'pool3', x, 'MAX', 3, 2)
    x = fire(4, x, 32, 128)
    x = fire(5, x, 32, 128)
    x = pool(net, 'pool5', x, 'MAX', 3, 2)
    for i, (s, e) in zip(range(6, 10), [(48, 192), (48, 192), (64, 256), (64, 256)]):
        x = fire(i, x, s, e)
    net.add('drop9', 'Dropout', x, x, dropout_param={'dropout_ratio': 0.5})
    x = conv(net, 'conv10', x, 1000, 1, wf={'type': 'gaussian', 'mean': 0.0, 'std': 0.01}, lr=False)
    relu(net, 'relu_conv10', x)
    x = pool(net, 'pool10', x, 'AVE', global_=True)
    if deploy:
        net.add('prob', 'Softmax', x)
    else:
        net.add('loss', 'SoftmaxWithLoss', [x, 'label'], include=[{'phase': TRAIN}])
        net.add('accuracy', 'Accuracy', [x, 'label'], include=[{'phase': TEST}])
        net.add('accuracy_top5', 'Accuracy', [x, 'label'], include=[{'phase': TEST}], accuracy_param={'top_k': 5})
    return net


MODELS = {
    'lenet': lenet,
    'cifar10_quick': lambda d: cifar10(d, False),
    'cifar10_full': lambda d: cifar10(d, True),
    'bvlc_reference_caffenet': caffenet,
    'bvlc_alexnet': lambda d: caffenet(d, alexnet=True),
    'bvlc_googlenet': googlenet,
    'vgg16': vgg16,
    'resnet50': resnet50,
    'squeezenet1.1': squeezenet11,
}


def main():
    for name, fn in MODELS.items():
        d = os.path.join(ROOT, 'models', name)
        os.makedirs(d, exist_ok=True)
        for fname, deploy in (('train_val.prototxt', False), ('deploy.prototxt', True)):
            with open(os.path.join(d, fname), 'w') as f:
                f.write(fn(deploy).text())
        print(d)


if __name__ == '__main__':
    main()
